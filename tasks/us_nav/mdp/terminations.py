"""Goal errors and success: within tolerance for several steps in a row ends the episode."""

from __future__ import annotations

import torch

from sim.transforms import quat_to_matrix, rotation_log


def pose_errors(poses: torch.Tensor, goals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position error (N,) in metres and rotation angle (N,) in radians between poses (N, 7)."""
    position = (goals[:, :3] - poses[:, :3]).norm(dim=-1)
    relative = quat_to_matrix(poses[:, 3:]).transpose(-1, -2) @ quat_to_matrix(goals[:, 3:])
    return position, rotation_log(relative).norm(dim=-1)


def within_tolerance(pos_err: torch.Tensor, ang_err: torch.Tensor, position_m: float, angle_rad: float) -> torch.Tensor:
    """(N,) bool: both errors within tolerance."""
    return (pos_err <= position_m) & (ang_err <= angle_rad)


def update_hold(hold: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Consecutive steps within tolerance (N,) int64: +1 while within, back to 0 otherwise."""
    return torch.where(within, hold + 1, torch.zeros_like(hold))
