"""Reward terms and costs, each (N,) float32 per step (weights: `RewardCfg`).

`reward_terms` turns the config into the task's reward as data: one `RewardTerm` per entry of
`TERMS`, in that order, each a function of the step's `StepOutcome`. Penalties are negative
terms with non-negative weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sim.envs.terms import RewardTerm, action_change, progress, terms_from_config
from tasks.us_nav.config import RewardCfg


@dataclass(frozen=True)
class StepOutcome:
    """What the reward terms read after one control step, (N,) per environment unless noted:
    goal errors before and after it (m, rad), whether the goal has been held, the contact force
    above its limit (N), the action (N, A) and the previous one, and the raw actions' overshoot
    beyond [-1, 1] (`BatchedEnv.action_excess`)."""

    previous_position_error_m: torch.Tensor
    position_error_m: torch.Tensor
    previous_angle_error_rad: torch.Tensor
    angle_error_rad: torch.Tensor
    success: torch.Tensor
    excess_force_n: torch.Tensor
    action: torch.Tensor
    last_action: torch.Tensor
    action_excess: torch.Tensor


def excess_force(force_n: torch.Tensor, max_force_n: float) -> torch.Tensor:
    """Newtons of contact force above max_force_n (0 below it): the contact_force cost."""
    return (force_n - max_force_n).clamp_min(0.0)


# Term name -> value on a StepOutcome: metres, radians, 1 (success), newtons, squared action units.
TERMS = {
    "progress_position": lambda s: progress(s.previous_position_error_m, s.position_error_m),
    "progress_angle": lambda s: progress(s.previous_angle_error_rad, s.angle_error_rad),
    "success": lambda s: s.success.float(),
    "force": lambda s: -s.excess_force_n,
    "action_rate": lambda s: -action_change(s.action, s.last_action),
    "action_excess": lambda s: -s.action_excess,
}


def reward_terms(cfg: RewardCfg) -> tuple[RewardTerm, ...]:
    """The reward of `cfg`: every term of `TERMS` with its weight (`sim.envs.terms.terms_from_config`)."""
    return terms_from_config(TERMS, cfg, "task.reward")
