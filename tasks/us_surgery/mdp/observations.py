"""Observation terms: the plan seen from the drill, as a tracked and registered system gives it.

A navigated spine system tracks the probe and the drill and registers the plan (made on the
patient's images) to the probe's image: the policy sees the plan and the drill in the probe frame
with a per-episode registration error and per-step tracking noise (`TrackingCfg`); the critic sees
the true poses. `policy_vector` assembles the policy's input from these terms and `drilling_state`,
for the environment and for the robot-side controller (`tasks.us_surgery.deploy`) alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sim.robot.arm import unit_joints
from sim.transforms import quat_to_matrix, rotation_exp
from tasks.us_surgery.config import ObservationCfg


@dataclass
class Frames:
    """The drill and the plan in one frame (N, 3) each, metres: the drill tip, its orientation
    (N, 3, 3) (columns x, y, z; z along the bit), the plan's entry, target and unit axis."""

    tip: torch.Tensor
    rot: torch.Tensor
    entry: torch.Tensor
    target: torch.Tensor
    axis: torch.Tensor


def _apply(rot: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (rot @ v[:, :, None])[:, :, 0]


def in_probe_frame(probe_pose: torch.Tensor, frames: Frames) -> Frames:
    """`frames` (patient frame) expressed in the probe frame of probe poses (N, 7)."""
    rot_t = quat_to_matrix(probe_pose[:, 3:]).transpose(-1, -2)
    origin = probe_pose[:, :3]
    return Frames(
        _apply(rot_t, frames.tip - origin),
        rot_t @ frames.rot,
        _apply(rot_t, frames.entry - origin),
        _apply(rot_t, frames.target - origin),
        _apply(rot_t, frames.axis),
    )


def tracked(frames: Frames, registration: torch.Tensor, noise: torch.Tensor) -> Frames:
    """`frames` (probe frame) as the navigation system reports them: the plan moved by the episode's
    registration error (N, 6) (translation m, rotation vector rad) and the drill by this step's
    tracking noise (N, 6) (same units)."""
    reg = rotation_exp(registration[:, 3:])
    shift = registration[:, :3]
    return Frames(
        frames.tip + noise[:, :3],
        rotation_exp(noise[:, 3:]) @ frames.rot,
        _apply(reg, frames.entry) + shift,
        _apply(reg, frames.target) + shift,
        _apply(reg, frames.axis),
    )


def plan_in_drill(frames: Frames, position_scale_m: float) -> torch.Tensor:
    """(N, 9): the plan's target and entry relative to the drill tip (divided by position_scale_m)
    and its unit axis, in the drill frame."""
    rot_t = frames.rot.transpose(-1, -2)
    return torch.cat(
        [
            _apply(rot_t, frames.target - frames.tip) / position_scale_m,
            _apply(rot_t, frames.entry - frames.tip) / position_scale_m,
            _apply(rot_t, frames.axis),
        ],
        -1,
    )


def drill_in_probe(frames: Frames, position_scale_m: float) -> torch.Tensor:
    """(N, 6): the drill tip (divided by position_scale_m) and its axis in the frame of `frames`."""
    return torch.cat([frames.tip / position_scale_m, frames.rot[:, :, 2]], -1)


def drilling_state(
    depth_m: torch.Tensor,
    thrust_n: torch.Tensor,
    in_bone: torch.Tensor,
    q: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    last_action: torch.Tensor,
    cfg: ObservationCfg,
) -> torch.Tensor:
    """(N, 3 + dof + A): the drilled depth (N,) m and thrust (N,) N by their scales, in bone (N,)
    (bool or 0/1), the drill arm's joint angles q (N, dof) mapped to [-1, 1] by their limits
    (dof,), and the last action (N, A)."""
    return torch.cat(
        [
            (depth_m / cfg.position_scale_m)[:, None],
            (thrust_n / cfg.force_scale_n)[:, None],
            in_bone.float()[:, None],
            unit_joints(q, lower, upper),
            last_action,
        ],
        -1,
    )


def policy_vector(seen: Frames, drilling: torch.Tensor, position_scale_m: float) -> torch.Tensor:
    """(N, D): the policy's input (`tasks.us_surgery.spaces`): the plan in the drill frame, the drill
    in the probe frame (both from the tracked `seen`, probe frame) and the `drilling_state`."""
    return torch.cat([plan_in_drill(seen, position_scale_m), drill_in_probe(seen, position_scale_m), drilling], -1)
