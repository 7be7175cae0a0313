"""Plan errors, success and failure of a drilled channel."""

from __future__ import annotations

import torch

from sim.surgery.breach import GRADES


def plan_errors(
    tip: torch.Tensor, z: torch.Tensor, entry: torch.Tensor, target: torch.Tensor, axis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) each: the tip's distance to the plan's target (m), the angle between the drill axis z
    (N, 3) and the plan's axis (rad), and the tip's signed depth error along the plan's axis (m,
    positive: short of the target) for tips (N, 3) and plans entry, target, axis (N, 3)."""
    tip_err = (target - tip).norm(dim=-1)
    cos = (z * axis).sum(-1).clamp(-1.0, 1.0)
    depth_err = ((target - tip) * axis).sum(-1)
    return tip_err, torch.acos(cos), depth_err


def grade_index(name: str) -> int:
    """The index in GRADES ("A".."E") of a Gertzbein-Robbins grade name."""
    return GRADES.index(name)


def succeeded(
    tip_err: torch.Tensor,
    angle_err: torch.Tensor,
    grade: torch.Tensor,
    stopped: torch.Tensor,
    tip_m: float,
    angle_rad: float,
    max_grade: int,
) -> torch.Tensor:
    """(N,) bool: the drill stopped (N,) bool (no feed commanded: the policy ends the hole) with the
    tip within tip_m of the target, the axis within angle_rad and the worst breach grade (N,) int64 at
    most max_grade."""
    return stopped & (tip_err <= tip_m) & (angle_err <= angle_rad) & (grade <= max_grade)


def failed(grade: torch.Tensor, in_canal: torch.Tensor, fail_grade: int) -> torch.Tensor:
    """(N,) bool: a breach of grade fail_grade or worse, or the drill in the spinal canal (N,) bool."""
    return (grade >= fail_grade) | in_canal
