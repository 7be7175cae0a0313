"""Gymnasium vector API over a `BatchedEnv`, so any Gymnasium-compatible library can train on it.

Observations are a dict of the env's observation groups as numpy arrays (N, ...); actions a
numpy or torch array (N, A) in [-1, 1]. Episodes reset in the same step they end
(`AutoresetMode.SAME_STEP`): infos["final_obs"] then holds every group's observation before the
reset and infos["_final_obs"] marks the environments it applies to; infos[<metric>] holds the
task's per-episode metrics and infos["Reward/<term>"] / infos["Cost/<name>"] the episode sums of
its reward terms and costs (NaN where no episode ended); infos["costs"] holds this step's costs
{name: (N,)} for constrained learners. The spaces are the env's declared ones (bounds and shapes
of `observation_spaces` and `action_space`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from sim.envs.base import BatchedEnv
from sim.envs.spaces import Space
from sim.errors import InputError


def _numpy(obs) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in obs.items()}


def box(space: Space) -> gym.spaces.Box:
    """The float32 Gymnasium box of a declared space."""
    low, high = space.bounds()
    return gym.spaces.Box(low, high, space.shape, np.float32)


class GymVectorEnv(VectorEnv):
    """`env` as a `gymnasium.vector.VectorEnv` with `num_envs` sub-environments."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, env: BatchedEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        env.keep_final_obs = True
        self.single_observation_space = gym.spaces.Dict({k: box(v) for k, v in env.observation_spaces.items()})
        self.single_action_space = box(env.action_space)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.env.generator.manual_seed(int(seed))
        return _numpy(self.env.reset()), {}

    def step(self, actions):
        if not isinstance(actions, torch.Tensor):
            array = np.asarray(actions)
            if array.dtype.kind not in "iuf":  # strings, objects and booleans have no meaning as actions
                raise InputError(
                    f"actions: expected numbers of shape ({self.num_envs}, "
                    f"{self.env.num_actions}), got dtype {array.dtype}"
                )
            actions = torch.as_tensor(array)
        obs, reward, terminated, truncated, extras = self.env.step(actions)
        infos: dict[str, Any] = {"costs": _numpy(extras["costs"])}
        done = (terminated | truncated).cpu().numpy()
        if done.any():
            if "final_obs" in extras:
                infos["final_obs"] = _numpy(extras["final_obs"])
                infos["_final_obs"] = done
            ids = np.flatnonzero(done)
            for key, value in extras["log"].items():
                full = np.full(self.num_envs, np.nan, np.float32)
                full[ids] = value.cpu().numpy()
                infos[key.removeprefix("Episode/")] = full
        return _numpy(obs), reward.cpu().numpy(), terminated.cpu().numpy(), truncated.cpu().numpy(), infos
