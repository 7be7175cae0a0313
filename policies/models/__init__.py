"""Network models for rsl-rl's model slots (agent.actor.class_name, agent.critic.class_name)."""
