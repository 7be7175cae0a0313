"""Probe motion in the skin-tangent frame: the commanded probe state and its update per step.

Commanded state per environment: skin coordinates xz (N, 2) (patient x and z of the contact
point, metres), yaw (N,) about the beam and tilt (N, 2) about the probe's x and y axes (radians).
"""

from __future__ import annotations

import torch

from sim.robot.contact import SkinBank
from sim.transforms import clamp_norm
from sim.ultrasound.placement import probe_pose_on_skin, skin_rotation
from tasks.us_nav.config import ActionCfg
from tasks.us_nav.mdp.terminations import pose_errors


def lagging(targets: torch.Tensor, poses: torch.Tensor, cfg: ActionCfg) -> torch.Tensor:
    """(N,) bool: the probe poses (N, 7) lag their targets (N, 7) by more than cfg.lag_steps
    steps' worth of motion (in position or angle)."""
    position, angle = pose_errors(poses, targets)
    return (position > cfg.lag_steps * cfg.translation_m) | (angle > cfg.lag_steps * max(cfg.yaw_rad, cfg.tilt_rad))


def settle(
    lagging_mask: torch.Tensor, old: tuple[torch.Tensor, ...], new: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """The commanded state (xz, yaw, tilt): `new` where the arm kept up, `old` where it lags
    (lagging_mask (N,) from `lagging`)."""
    return tuple(torch.where(lagging_mask.reshape(-1, *[1] * (n.dim() - 1)), o, n) for o, n in zip(old, new))


def skin_targets(
    skin: SkinBank, patient_idx: torch.Tensor, xz: torch.Tensor, yaw: torch.Tensor, tilt: torch.Tensor, press_m: float
) -> torch.Tensor:
    """Probe targets (N, 7) for the commanded state: on the skin above xz (N, 2), turned by yaw
    (N,), tilted by tilt (N, 2), pressed press_m into the skin."""
    point, normal = skin.query(patient_idx, xz[:, 0], xz[:, 1])
    return probe_pose_on_skin(point, normal, yaw, press_m, tilt)


def move_probe(
    actions: torch.Tensor,
    cfg: ActionCfg,
    xz: torch.Tensor,
    yaw: torch.Tensor,
    tilt: torch.Tensor,
    skin: SkinBank,
    patient_idx: torch.Tensor,
    box_low: torch.Tensor,
    box_high: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New commanded (xz, yaw, tilt) after actions (N, 5) in [-1, 1] (see `ActionCfg`).

    The translation runs along the untilted probe's lateral and elevation axes on the skin,
    taken in the (x, z) plane; the contact point stays inside the workspace box [box_low,
    box_high] (N, 2) and on the skin (a step that would leave the body is not taken).
    """
    _, normal = skin.query(patient_idx, xz[:, 0], xz[:, 1])
    axes = skin_rotation(normal, yaw)[:, :, :2]  # (N, 3, 2): probe x and y in the patient frame
    step = (axes @ (actions[:, :2] * cfg.translation_m)[:, :, None])[:, :, 0]
    moved = torch.minimum(torch.maximum(xz + step[:, [0, 2]], box_low), box_high)
    point, _ = skin.query(patient_idx, moved[:, 0], moved[:, 1])
    on_body = torch.isfinite(point).all(-1, keepdim=True)
    xz = torch.where(on_body, moved, xz)
    yaw = (yaw + actions[:, 2] * cfg.yaw_rad).clamp(*cfg.yaw_range_rad)
    tilt = clamp_norm(tilt + actions[:, 3:5] * cfg.tilt_rad, cfg.max_tilt_rad)
    return xz, yaw, tilt
