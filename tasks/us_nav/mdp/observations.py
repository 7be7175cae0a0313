"""Observation terms. Each returns (N, D) float32 (images: (N, C, H, W) in [0, 1])."""

from __future__ import annotations

import torch

from sim.robot.arm import unit_joints
from sim.transforms import quat_to_matrix, rotation_log


def relative_goal_pose(
    poses: torch.Tensor, goals: torch.Tensor, position_scale_m: float, angle_scale_rad: float
) -> torch.Tensor:
    """(N, 6): the goal pose seen from the probe: position (goal - probe, in the probe frame,
    divided by position_scale_m) and the rotation vector of R_probe^T R_goal / angle_scale_rad."""
    rot = quat_to_matrix(poses[:, 3:])
    rot_t = rot.transpose(-1, -2)
    position = (rot_t @ (goals[:, :3] - poses[:, :3])[:, :, None])[:, :, 0]
    rotation = rotation_log(rot_t @ quat_to_matrix(goals[:, 3:]))
    return torch.cat([position / position_scale_m, rotation / angle_scale_rad], -1)


def proprioception(
    cfg, yaw: torch.Tensor, tilt: torch.Tensor, force_n: torch.Tensor, last_action: torch.Tensor
) -> torch.Tensor:
    """(N, 5 + A): sin and cos of the commanded yaw (N,), tilt (N, 2) / max tilt, contact force
    (N,) / max force, and the last action (N, A). cfg: the task's `UsNavCfg`.

    Nothing here names where the probe is on the patient: joint angles or a position in the
    anchor frame would let a policy learn the pose each goal image belongs to instead of
    comparing images (it then fails on anatomy it has not seen); they are critic-only
    (`pose_state`). Yaw and tilt are relative to the skin and the patient axes, the same for
    every patient."""
    return torch.cat(
        [
            yaw.sin()[:, None],
            yaw.cos()[:, None],
            tilt / cfg.actions.max_tilt_rad,
            (force_n / cfg.reward.max_force_n)[:, None],
            last_action,
        ],
        -1,
    )


def pose_state(
    cfg, q: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, poses: torch.Tensor, anchor: torch.Tensor
) -> torch.Tensor:
    """(N, dof + 3) privileged pose: joint angles q (N, dof) mapped to [-1, 1] by their limits
    (dof,) and the probe position relative to the anchor point (N, 3) over
    cfg.observation.workspace_scale_m; poses (N, 7) and anchor (N, 3) share a frame."""
    probe_position = (poses[:, :3] - anchor) / cfg.observation.workspace_scale_m
    return torch.cat([unit_joints(q, lower, upper), probe_position], -1)


def actor_groups(
    cfg,
    proprio: torch.Tensor,
    relative: torch.Tensor | None = None,
    history: torch.Tensor | None = None,
    goal_image: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The actor's observation groups, as the environment and the deployment runtime build them.

    With images (cfg.observation.images): {"policy": proprio, "image": history (N, K, S, S) and
    goal_image (N, S, S) stacked}; without: {"policy": relative goal pose (N, 6) and proprio}.
    """
    if cfg.observation.images:
        return {"policy": proprio, "image": image_stack(history, goal_image)}
    return {"policy": torch.cat([relative, proprio], -1)}


def image_stack(history: torch.Tensor, goal_images: torch.Tensor) -> torch.Tensor:
    """(N, K + 1, H, W): the K most recent images (newest first) and the goal image (N, H, W)."""
    return torch.cat([history, goal_images[:, None]], 1)


def progress_state(
    pos_err: torch.Tensor, ang_err: torch.Tensor, hold: torch.Tensor, steps: torch.Tensor, cfg
) -> torch.Tensor:
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
