"""Batched environments: the base class tasks build on, and adapters to RL libraries."""

from sim.envs.base import BatchedEnv

__all__ = ["BatchedEnv"]
