"""Reward terms, each (N,) float32 per step, before weighting (weights: `RewardCfg`)."""

from __future__ import annotations

import torch


def progress(previous_error: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Error removed this step (positive when moving toward the goal), in the error's units."""
    return previous_error - error


def excess_force(force_n: torch.Tensor, max_force_n: float) -> torch.Tensor:
    """Newtons of contact force above max_force_n (0 below it)."""
    return (force_n - max_force_n).clamp_min(0.0)


def action_rate(action: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
    """Squared change of the action since the last step (jerky motion)."""
    return (action - last_action).square().sum(-1)
