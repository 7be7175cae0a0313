"""Goals: every patient's screw plans for the task's levels and sides as tensors (one lookup per step).

Goal g = level index x len(sides) + side index; `plan_table` stacks each patient's
`sim.anatomy.plans.ScrewPlan`s in that order, so a goal is one gather over (patient, goal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.errors import InputError


def goal_names(levels: Sequence[str], sides: Sequence[str]) -> list[str]:
    """["vertebrae_L1/left", ...]: the plan keys of every goal, level-major."""
    return [f"{level}/{side}" for level in levels for side in sides]


@dataclass
class PlanTable:
    """Per patient (P) and goal (G), patient frame, metres: entry (P, G, 3) on the bone surface,
    target (P, G, 3), unit axis (P, G, 3) from entry to target, length_m (P, G), screw radius_m (P, G);
    level (G,) int64 index of each goal's level in `sim.anatomy.landmarks.LUMBAR`."""

    entry: torch.Tensor
    target: torch.Tensor
    axis: torch.Tensor
    length_m: torch.Tensor
    radius_m: torch.Tensor
    level: torch.Tensor


def plan_table(
    patients: Sequence[Patient], levels: Sequence[str], sides: Sequence[str], lumbar: Sequence[str], device
) -> PlanTable:
    """The plans of `patients` for every goal; InputError naming each patient and plan that is missing
    (a patient without the target level, or whose pedicle gave no plan)."""
    names = goal_names(levels, sides)
    missing = [(p.name, key) for p in patients for key in names if key not in p.plans]
    if missing:
        raise InputError(
            f"task goal levels and sides: patients lack screw plans {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} (a level missing from their labels, or no pedicle found; "
            "choose task.goal.levels / task.goal.sides they have)"
        )
    unknown = [lv for lv in levels if lv not in lumbar]
    if unknown:
        raise InputError(f"task.goal.levels: expected lumbar levels {list(lumbar)}, got {unknown}")

    def stack(fn) -> torch.Tensor:
        values = np.array([[fn(p.plans[key]) for key in names] for p in patients], dtype=np.float32)
        return torch.as_tensor(values, device=device)

    entry, target = stack(lambda s: s.entry), stack(lambda s: s.target)
    axis = target - entry
    length = axis.norm(dim=-1)
    level = torch.tensor([lumbar.index(key.split("/")[0]) for key in names], device=device)
    return PlanTable(entry, target, axis / length[..., None], length, stack(lambda s: s.radius_m), level)
