"""rsl-rl 5.x `VecEnv` over a `BatchedEnv`.

rsl-rl expects `step` to return (obs, rewards, dones, extras) with extras["time_outs"] marking
truncations (their values are bootstrapped) and extras["log"] holding metrics to average: its
logger writes the env's "Episode/<metric>", "Reward/<term>" and "Cost/<name>" (per-episode sums of
the episodes that ended in an iteration, averaged) under those names.
"""

from __future__ import annotations

import torch
from rsl_rl.env import VecEnv
from tensordict import TensorDict

from sim.envs.base import BatchedEnv


class RslRlVecEnv(VecEnv):
    """`env` as an rsl-rl VecEnv, sized by the env's declared spaces (`observation_spaces`:
    {group: `Space`}) and reporting its costs' units (`cost_units`, for constrained algorithms). cfg:
    what the runner's logger stores as the env config."""

    def __init__(self, env: BatchedEnv, cfg: dict | None = None) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.num_actions = env.action_space.shape[0]
        self.observation_spaces = env.observation_spaces
        self.max_episode_length = env.max_episode_length
        self.cost_units = dict(env.cost_units)
        self.device = env.device
        self.cfg = cfg or {}

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.env.episode_length_buf

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        # rsl-rl's init_at_random_ep_len assigns a new buffer; keep the env's own tensor.
        self.env.episode_length_buf.copy_(value)

    def get_observations(self) -> TensorDict:
        return self.env.get_observations()

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        obs, reward, terminated, truncated, extras = self.env.step(actions)
        return obs, reward, (terminated | truncated).long(), extras
