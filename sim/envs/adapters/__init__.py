"""Adapters exposing a `BatchedEnv` to RL libraries: rsl-rl's VecEnv and Gymnasium's vector API."""
