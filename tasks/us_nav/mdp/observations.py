"""Observation terms. Each returns (N, D) float32 (images: (N, C, H, W) in [0, 1])."""

from __future__ import annotations

import torch

from sim.transforms import quat_to_matrix, rotation_log


def relative_goal_pose(poses: torch.Tensor, goals: torch.Tensor, position_scale_m: float, angle_scale_rad: float) -> torch.Tensor:
    """(N, 6): the goal pose seen from the probe: position (goal - probe, in the probe frame,
    divided by position_scale_m) and the rotation vector of R_probe^T R_goal / angle_scale_rad."""
    rot = quat_to_matrix(poses[:, 3:])
    rot_t = rot.transpose(-1, -2)
    position = (rot_t @ (goals[:, :3] - poses[:, :3])[:, :, None])[:, :, 0]
    rotation = rotation_log(rot_t @ quat_to_matrix(goals[:, 3:]))
    return torch.cat([position / position_scale_m, rotation / angle_scale_rad], -1)


def proprioception(
    q: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    probe_position: torch.Tensor,
    yaw: torch.Tensor,
    tilt: torch.Tensor,
    max_tilt_rad: float,
    force_n: torch.Tensor,
    max_force_n: float,
    last_action: torch.Tensor,
) -> torch.Tensor:
    """(N, dof + 13): joint angles mapped to [-1, 1] by their limits, the probe position
    (N, 3) as given (the task passes it in the anchor frame, scaled), sin and cos of the yaw,
    tilt / max tilt, contact force / max force, and the last action."""
    q_unit = 2 * (q - lower) / (upper - lower) - 1
    return torch.cat(
        [q_unit, probe_position, yaw.sin()[:, None], yaw.cos()[:, None], tilt / max_tilt_rad, (force_n / max_force_n)[:, None], last_action],
        -1,
    )


def image_stack(history: torch.Tensor, goal_images: torch.Tensor) -> torch.Tensor:
    """(N, K + 1, H, W): the K most recent images (newest first) and the goal image (N, H, W)."""
    return torch.cat([history, goal_images[:, None]], 1)


def progress_state(pos_err: torch.Tensor, ang_err: torch.Tensor, hold: torch.Tensor, steps: torch.Tensor, cfg) -> torch.Tensor:
    """(N, 4) privileged progress: errors over their tolerances (capped), the success hold
    fraction and the fraction of the episode elapsed. cfg: the task's `UsNavCfg`."""
    return torch.stack(
        [
            (pos_err / cfg.success.position_m).clamp(max=20.0) / 20.0,
            (ang_err / cfg.success.angle_rad).clamp(max=20.0) / 20.0,
            hold.float() / cfg.success.hold_steps,
            steps.float() / cfg.episode_steps,
        ],
        -1,
    )
