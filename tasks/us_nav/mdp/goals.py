"""Goal tables: the probe pose (and optionally image) of every standard plane of every patient."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.robot.contact import SkinBank
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp
from sim.ultrasound.placement import standard_plane_pose


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
    rotation = quat_to_matrix(flat[:, 3:])
    beam, into = rotation[:, :, 2], -normal
    lean = torch.arccos((beam * into).sum(-1).clamp(-1.0, 1.0))  # (P*G,) the beam's angle to -normal, rad
    # Leaning planes turn toward the skin normal (about beam x -normal, the shortest turn) until
    # they lean max_tilt_rad: the rest of their orientation stays the plane's.
    axis = torch.nn.functional.normalize(torch.cross(beam, into, dim=-1), dim=-1, eps=1e-12)
    turn = rotation_exp(axis * (lean - max_tilt_rad).clamp_min(0.0)[:, None])
    quat = torch.where((lean > max_tilt_rad)[:, None], matrix_to_quat(turn @ rotation), flat[:, 3:])
    return torch.cat([point - normal * press_m, quat], -1).reshape(p, g, 7)


def goal_names(levels: Sequence[str], views: Sequence[str]) -> list[str]:
    """Names "<level>/<view>" in goal-index order."""
    return [f"{level}/{view}" for level in levels for view in views]
