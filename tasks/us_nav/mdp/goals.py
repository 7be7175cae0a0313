"""Goal tables: the probe pose (and optionally image) of every standard plane of every patient."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.robot.contact import SkinBank
from sim.transforms import clamp_norm, matrix_to_quat
from sim.ultrasound.placement import skin_rotation, skin_state_from_pose, standard_plane_pose


def goal_pose_table(
    patients: Sequence[Patient],
    skin: SkinBank,
    levels: Sequence[str],
    views: Sequence[str],
    press_m: float,
    max_tilt_rad: float,
) -> torch.Tensor:
    """(P, G, 7) probe poses, patient frame, of goal g = level_index * len(views) + view_index.

    Each standard-plane pose is pressed press_m into the skin along the skin normal, as every
    probe pose of the task is, so the goal is a pose the probe can take exactly. A plane that
    leans more than max_tilt_rad (radians) from the skin normal there (the back flat over a
    lordotic spine: a supine CT's L5) is not: its goal is the nearest pose that is, the probe
    tilted toward the plane by max_tilt_rad, as a sonographer rocks the probe as far as contact
    allows. Built once per environment set (a loop over patients and planes at set-up, not per step).
    """
    table = [[standard_plane_pose(p, level, view, 0.0) for level in levels for view in views] for p in patients]
    poses = torch.tensor(np.array(table), dtype=torch.float32, device=skin.device)
    p, g = poses.shape[:2]
    flat = poses.reshape(p * g, 7)
    point, normal = skin.query(torch.arange(p, device=skin.device).repeat_interleave(g), flat[:, 0], flat[:, 2])
    yaw, tilt = skin_state_from_pose(flat, normal)
    reachable = matrix_to_quat(skin_rotation(normal, yaw, clamp_norm(tilt, max_tilt_rad)))
    # Only leaning planes are replaced: reading a pose as (yaw, tilt) drops a turn about the tilted beam.
    quat = torch.where((tilt.norm(dim=-1) > max_tilt_rad)[:, None], reachable, flat[:, 3:])
    return torch.cat([point - normal * press_m, quat], -1).reshape(p, g, 7)


def goal_names(levels: Sequence[str], views: Sequence[str]) -> list[str]:
    """Names "<level>/<view>" in goal-index order."""
    return [f"{level}/{view}" for level in levels for view in views]
