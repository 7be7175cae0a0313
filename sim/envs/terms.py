"""Rewards as data: a task's reward is a list of weighted terms, summed by one helper.

Each `RewardTerm` names a function of the task's per-step context (whatever the task passes:
errors, forces, actions) returning (N,) float32 and its weight; `weighted` evaluates the list and
`total` adds the weighted values in the list's order. `BatchedEnv.step` logs every term's
per-episode sum as `Reward/<name>`.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from sim.errors import require, require_number


@dataclass(frozen=True)
class RewardTerm:
    """One term: reward += weight * fn(context), fn returning (N,) float32 in the term's units."""

    name: str
    fn: Callable[[Any], torch.Tensor]
    weight: float

    def __post_init__(self) -> None:
        require_number(self.weight, f"reward term {self.name!r} weight", -math.inf)


def weighted(terms: Sequence[RewardTerm], context: Any) -> dict[str, torch.Tensor]:
    """{term name: weight * value (N,)} of every term on `context`, in the terms' order."""
    return {t.name: t.weight * t.fn(context) for t in terms}


def total(values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N,) the sum of the weighted term values, added left to right in their order."""
    require(len(values) > 0, "reward terms", "at least one term", "none")
    return functools.reduce(operator.add, values.values())


def progress(previous_error: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Error removed this step (positive when moving toward the goal), in the error's units."""
    return previous_error - error


def action_change(action: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
    """(N,) squared change of the action (N, A) since the last step (jerky motion)."""
    return (action - last_action).square().sum(-1)


def terms_from_config(
    fns: Mapping[str, Callable[[Any], torch.Tensor]], weights: Any, what: str
) -> tuple[RewardTerm, ...]:
    """One `RewardTerm` per entry of fns {name: fn}, in its order, weighted by the attribute of that
    name of `weights` (a task's reward config); InputError naming `what`.<name> unless the weight is
    finite and >= 0 (penalties are negative terms already)."""
    return tuple(
        RewardTerm(name, fn, require_number(getattr(weights, name), f"{what}.{name}", 0.0)) for name, fn in fns.items()
    )
