"""A scripted expert for `us_surgery`: the surgeon's sequence on the privileged (true) plan.

Approach: tilt the drill onto the plan's axis and bring the tip onto it, just short of the entry
point; then drill: full feed until the tip nears the planned depth, slowing to stop on it, with
small corrections toward the axis (which the bone mostly resists). It reads the true plan in the
drill frame from the critic group (see `tasks.us_surgery.spaces`); a baseline, the test that every
plan can be drilled with the task's actions, and a demonstrator.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from tensordict import TensorDict

from tasks.us_surgery.config import UsSurgeryCfg

APPROACH_M = 1e-3  # the tip waits this far before the entry point, in soft tissue
ALIGNED_RAD = 0.01  # and starts drilling once the axis is this close
ON_LINE_M = 5e-4  # and the tip this close to the axis
NEAR_ENTRY_M = 3e-3  # and this close to the entry point along it
STOP_M = 2e-4  # drilling stops this short of the target


def expert_actions(obs: TensorDict, cfg: UsSurgeryCfg) -> torch.Tensor:
    """Actions (N, 6) in [-1, 1] from the critic group's true plan in the drill frame."""
    critic = obs["critic"]
    scale = cfg.observation.position_scale_m
    target, entry, axis = critic[:, 0:3] * scale, critic[:, 3:6] * scale, critic[:, 6:9]
    in_bone = critic[:, 11] > 0.5
    a = cfg.actions
    tilt = torch.stack([-axis[:, 1], axis[:, 0]], -1) / a.tilt_rad
    # Outside bone: to the approach point on the axis; in bone: onto the axis, across the bit only.
    approach = entry - axis * APPROACH_M
    remaining = target[:, 2]
    across = target - axis * (target * axis).sum(-1, keepdim=True)
    across[:, 2] = 0.0
    move = torch.where(in_bone[:, None], across, approach) / a.translation_m
    angle = torch.atan2(axis[:, :2].norm(dim=-1), axis[:, 2])
    # Ready to drill: aligned, on the axis and near the entry (the last mm of soft tissue, or a
    # step into bone the translation may not take, is drilled).
    off_axis = (entry - axis * (entry * axis).sum(-1, keepdim=True)).norm(dim=-1)
    ready = (off_axis < ON_LINE_M) & (angle < ALIGNED_RAD) & ((entry * axis).sum(-1) < NEAR_ENTRY_M)
    per_step = cfg.drill.max_feed_m_s * cfg.drill.feed_cancellous / cfg.control_hz
    feed = ((remaining - STOP_M) / per_step).clamp(0.0, 1.0)
    feed = torch.where(in_bone | ready, feed, torch.zeros_like(feed))
    return torch.cat([move, tilt, feed[:, None]], -1).clamp(-1.0, 1.0)


def make_expert(env) -> Callable[[TensorDict], torch.Tensor]:
    """The expert as a policy (observations -> actions) for a `UsSurgeryEnv` (the registry's `expert`)."""
    return partial(expert_actions, cfg=env.cfg)
