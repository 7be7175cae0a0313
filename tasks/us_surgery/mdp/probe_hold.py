"""Where the probe arm holds the probe: an in-plane view of the planned drill path.

The image plane contains the plan's axis and the beam, so a drill on its plan is imaged along its
length (in-plane guidance, as for needles); the probe sits on the skin beside the drill's way in,
toward the midline.
"""

from __future__ import annotations

import torch

from sim.robot.contact import SkinBank
from sim.transforms import matrix_to_quat
from tasks.us_surgery.config import ProbeHoldCfg


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def skin_crossing(skin: SkinBank, patient_idx: torch.Tensor, entry: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """(N, 3) where the lines from entry (N, 3) back along unit axis (N, 3) (posterior, out of the
    body) cross the skin: a few fixed-point steps on the skin's height map (y is the height, the
    axis points anterior, +y)."""
    t = torch.zeros_like(entry[:, 0])
    for _ in range(4):
        p = entry - axis * t[:, None]
        point, _ = skin.query(patient_idx, p[:, 0], p[:, 2])
        t = (entry[:, 1] - point[:, 1]) / axis[:, 1].clamp_min(0.2)
    return entry - axis * t[:, None]


def hold_pose(
    skin: SkinBank,
    patient_idx: torch.Tensor,
    entry: torch.Tensor,
    axis: torch.Tensor,
    side_sign: torch.Tensor,
    half_width_m: float,
    cfg: ProbeHoldCfg,
    draws: torch.Tensor,
) -> torch.Tensor:
    """Probe targets (N, 7), patient frame, for plans entering at entry (N, 3) along unit axis (N, 3).

    The probe's centre lies on the skin half_width_m + clearance_m + draws[:, 0] x jitter_m from where
    the axis crosses the skin, toward the midline (side_sign (N,): +1 a right plan, -1 left); its image
    plane is the plane through the axis and that skin point, shifted by draws[:, 1] x
    elevation_jitter_m along its normal; the beam is the inward skin normal turned into the plane, the
    face pressed press_m in. draws (N, 2): uniform in [0, 1] and [-1, 1]. Probe frame columns: x across
    the image, y the plane's normal (superior side), z the beam.
    """
    crossing = skin_crossing(skin, patient_idx, entry, axis)
    x = crossing[:, 0] - side_sign * (half_width_m + cfg.clearance_m + draws[:, 0] * cfg.jitter_m)
    point, normal = skin.query(patient_idx, x, crossing[:, 2])
    plane = _unit(torch.linalg.cross(axis, point - entry))
    plane = torch.where(plane[:, 2:3] < 0, -plane, plane)
    beam = _unit(-normal - (-normal * plane).sum(-1, keepdim=True) * plane)
    rot = torch.stack([torch.linalg.cross(plane, beam), plane, beam], -1)
    position = point + beam * cfg.press_m + plane * (draws[:, 1:2] * cfg.elevation_jitter_m)
    return torch.cat([position, matrix_to_quat(rot)], -1)
