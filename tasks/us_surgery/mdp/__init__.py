"""us_surgery's MDP terms: plain batched functions over the task's state tensors."""
