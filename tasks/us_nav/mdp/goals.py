"""Goal tables: the probe pose (and optionally image) of every standard plane of every patient."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.robot.contact import SkinBank
from sim.ultrasound.placement import standard_plane_pose


def goal_pose_table(
    patients: Sequence[Patient], skin: SkinBank, levels: Sequence[str], views: Sequence[str], press_m: float
) -> torch.Tensor:
    """(P, G, 7) probe poses, patient frame, of goal g = level_index * len(views) + view_index.

    Each standard-plane pose is pressed press_m into the skin along the skin normal, as every
    probe pose of the task is, so the goal is a pose the probe can take exactly. Built once per
    environment set (a loop over patients and planes at set-up, not per step).
    """
    table = [[standard_plane_pose(p, level, view, 0.0) for level in levels for view in views] for p in patients]
    poses = torch.tensor(np.array(table), dtype=torch.float32, device=skin.device)
    p, g = poses.shape[:2]
    flat = poses.reshape(p * g, 7)
    point, normal = skin.query(torch.arange(p, device=skin.device).repeat_interleave(g), flat[:, 0], flat[:, 2])
    return torch.cat([point - normal * press_m, flat[:, 3:]], -1).reshape(p, g, 7)


def goal_names(levels: Sequence[str], views: Sequence[str]) -> list[str]:
    """Names "<level>/<view>" in goal-index order."""
    return [f"{level}/{view}" for level in levels for view in views]
