"""A scripted expert for `us_nav`: a proportional controller on the privileged relative goal pose.

It reads the relative pose from the critic group (first 6 entries) and turns it into actions;
used to check that every goal is reachable with the task's actions, as a baseline, and to
record demonstrations.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from tensordict import TensorDict

from tasks.us_nav.config import UsNavCfg


def expert_actions(obs: TensorDict, cfg: UsNavCfg, gain: float = 1.0) -> torch.Tensor:
    """Actions (N, 5) in [-1, 1] moving the probe straight toward the goal pose.

    Translation along the probe's x and y axes by the goal's offset in the probe frame, yaw by
    the rotation about the beam, tilt by the rotation about the probe's x and y axes, each
    divided by its per-step bound (then clamped), times `gain`.
    """
    rel = obs["critic"][:, :6]
    position = rel[:, :3] * cfg.observation.position_scale_m
    rotation = rel[:, 3:6] * cfg.observation.angle_scale_rad
    a = cfg.actions
    act = torch.stack(
        [
            position[:, 0] / a.translation_m,
            position[:, 1] / a.translation_m,
            rotation[:, 2] / a.yaw_rad,
            rotation[:, 0] / a.tilt_rad,
            rotation[:, 1] / a.tilt_rad,
        ],
        -1,
    )
    return (gain * act).clamp(-1.0, 1.0)


def make_expert(env) -> Callable[[TensorDict], torch.Tensor]:
    """The expert as a policy (observations -> actions) for a `UsNavEnv` (the registry's `expert`)."""
    return partial(expert_actions, cfg=env.cfg)
