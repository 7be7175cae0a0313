"""The drill's motion per step: the commanded tip pose and the channel it cuts.

State per environment (patient frame, metres): the drill tip (N, 3) and orientation R (N, 3, 3)
(columns: the drill frame's x, y and z; z along the bit, into the body), whether the bit is in
bone (`entered`, (N,) bool), and once it is, the channel it cuts: its entry point (N, 3) (the tip
where the bit first met bone) and the drilled depth (N,) from it, with the channel's axis the
drill's z. The channel stays straight: a lateral push or a tilt in bone (scaled down by the bone's
hold, `sim.surgery.drilling.Drill.lateral_factor`) re-aims it from its entry through the new tip.
"""

from __future__ import annotations

import torch

from sim.transforms import clamp_norm, rotation_exp
from tasks.us_surgery.config import ActionCfg

_MIN_CHANNEL_M = 1e-4  # below this depth a channel has no direction of its own to re-aim


def align(rot: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Orientations (N, 3, 3) turned by the smallest rotation taking their z column onto unit z (N, 3)."""
    old = rot[:, :, 2]
    cross = torch.linalg.cross(old, z)
    angle = torch.atan2(cross.norm(dim=-1), (old * z).sum(-1))
    axis = cross / cross.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return rotation_exp(axis * angle[:, None]) @ rot


def commanded_motion(actions: torch.Tensor, cfg: ActionCfg, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the motion part of actions (N, 6) in [-1, 1] asks of drills with orientations rot (N, 3, 3):
    the tip's translation (N, 3) in the task frame (the drill-frame vector clipped to translation_m)
    and the tilt (N, 3), a rotation vector in the drill frame (about x and y, at most tilt_rad each)."""
    step = clamp_norm(actions[:, :3] * cfg.translation_m, cfg.translation_m)
    world = (rot @ step[:, :, None])[:, :, 0]
    tilt = torch.cat([actions[:, 3:5] * cfg.tilt_rad, torch.zeros_like(actions[:, :1])], -1)
    return world, tilt


def across_bit(world: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Translations world (N, 3) without their part along unit bit axes z (N, 3): what is left of a
    translation in bone (only drilling advances the bit)."""
    return world - (world * z).sum(-1, keepdim=True) * z


def move(
    actions: torch.Tensor,
    cfg: ActionCfg,
    tip: torch.Tensor,
    rot: torch.Tensor,
    entered: torch.Tensor,
    entry: torch.Tensor,
    depth: torch.Tensor,
    lateral: torch.Tensor,
    blocked,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The drill's (tip, R, depth) after the motion part of actions (N, 6) in [-1, 1] (`ActionCfg`).

    Outside bone the tip translates by the clipped translation and the drill tilts about its tip; a
    translation into bone (`blocked(points (N, 3)) -> (N,) bool`) is not taken. In bone (entered) the
    axial translation is dropped, the rest and the tilt scaled by lateral (N,) in (0, 1], the tilt
    pivoting about the channel's entry; the channel is then re-aimed from entry through the new tip,
    a push turning it by at most lateral x tilt_rad.
    """
    world, tilt = commanded_motion(actions, cfg, rot)
    # Outside bone: free motion, never into bone.
    free_tip = tip + world
    free_tip = torch.where(blocked(free_tip)[:, None], tip, free_tip)
    free_rot = rot @ rotation_exp(tilt)
    # In bone: the bone holds the shaft.
    held_rot = rot @ rotation_exp(tilt * lateral[:, None])
    z = rot[:, :, 2]
    # The entry hole holds the shaft: a push across the bit turns the channel about its entry by at
    # most what a tilt may (lateral x tilt_rad per step), however shallow the bit is in.
    push = across_bit(world, z) * lateral[:, None]
    reach = depth * torch.tan(lateral * cfg.tilt_rad)
    push = push * (reach / push.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)[:, None]
    pushed = entry + held_rot[:, :, 2] * depth[:, None] + push
    channel = pushed - entry
    length = channel.norm(dim=-1)
    aimed = length > _MIN_CHANNEL_M
    new_z = torch.where(aimed[:, None], channel / length.clamp_min(1e-12)[:, None], held_rot[:, :, 2])
    held_rot = align(held_rot, new_z)
    held_depth = torch.where(aimed, length, depth)
    held_tip = entry + new_z * held_depth[:, None]
    inside = entered[:, None]
    return (
        torch.where(inside, held_tip, free_tip),
        torch.where(inside[:, :, None], held_rot, free_rot),
        torch.where(entered, held_depth, torch.zeros_like(depth)),
    )


def feed_command(actions: torch.Tensor) -> torch.Tensor:
    """(N,) feed command in [0, 1] of the drill's max feed: max(0, action 5)."""
    return actions[:, 5].clamp_min(0.0)
