"""Task definitions: one folder per task with a config dataclass and MDP terms."""
