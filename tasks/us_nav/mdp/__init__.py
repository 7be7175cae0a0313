"""Plain batched MDP terms of `us_nav`: goals, probe motion, observations, rewards, terminations."""
