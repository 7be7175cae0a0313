"""Reward terms, each (N,) float32 per step (weights: `RewardCfg`), and the breach cost.

`reward_terms` turns the config into the task's reward as data: one `RewardTerm` per entry of
`TERMS`, in that order, each a function of the step's `StepOutcome`. Penalties are negative terms
with non-negative weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sim.envs.terms import RewardTerm, action_change, progress, terms_from_config
from tasks.us_surgery.config import RewardCfg


@dataclass(frozen=True)
class StepOutcome:
    """What the reward terms read after one control step, (N,) per environment unless noted: the
    tip-to-target distance (m) and axis error (rad) before and after it, success and failure, the
    new weighted breach this step (mm, the breach cost), the action (N, A) and the previous one,
    and the raw actions' overshoot beyond [-1, 1]."""

    previous_tip_error_m: torch.Tensor
    tip_error_m: torch.Tensor
    previous_angle_error_rad: torch.Tensor
    angle_error_rad: torch.Tensor
    success: torch.Tensor
    failure: torch.Tensor
    new_breach_mm: torch.Tensor
    action: torch.Tensor
    last_action: torch.Tensor
    action_excess: torch.Tensor


def new_breach(worst_before_mm: torch.Tensor, worst_mm: torch.Tensor) -> torch.Tensor:
    """(N,) mm by which the episode's worst weighted breach grew this step: the breach_mm cost
    (its episode sum is the episode's worst weighted breach)."""
    return (worst_mm - worst_before_mm).clamp_min(0.0)


# Term name -> value on a StepOutcome: metres, radians, 1 (success, failure), mm, squared action units.
TERMS = {
    "progress_tip": lambda s: progress(s.previous_tip_error_m, s.tip_error_m),
    "progress_axis": lambda s: progress(s.previous_angle_error_rad, s.angle_error_rad),
    "success": lambda s: s.success.float(),
    "breach": lambda s: -s.new_breach_mm,
    "failure": lambda s: -s.failure.float(),
    "action_rate": lambda s: -action_change(s.action, s.last_action),
    "action_excess": lambda s: -s.action_excess,
}


def reward_terms(cfg: RewardCfg) -> tuple[RewardTerm, ...]:
    """The reward of `cfg`: every term of `TERMS` with its weight (`sim.envs.terms.terms_from_config`)."""
    return terms_from_config(TERMS, cfg, "task.reward")
