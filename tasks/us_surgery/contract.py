"""us_surgery's side of the generic tools: how its episodes are summarised (`policies.evaluation`)."""

from __future__ import annotations

from typing import Mapping

import torch

from sim.surgery.breach import GRADES

# What `summary` reports, with units ("1": a fraction); evaluation also reports "episodes".
METRICS = {
    "success_rate": "1",
    "failure_rate": "1",
    "grade_fractions": "1",
    "breach_rate": "1",
    "medial_breach_rate": "1",
    "canal_rate": "1",
    "tip_err_mm_mean": "mm",
    "angle_err_deg_mean": "deg",
    "depth_err_mm_mean": "mm",
    "breach_mm_mean": "mm",
    "ep_cost_mean": "mm",
    "time_s_mean": "s",
}


def summary(episodes: Mapping[str, torch.Tensor], dt: float) -> dict:
    """The metrics of one episode per environment: episodes holds the task's per-episode log (success,
    failure, grade (index into GRADES), breach_mm, medial_breach, in_canal, tip_err_mm, angle_err_deg,
    depth_err_mm, steps: (N,) each) and the breach cost's episode sum "Cost/breach_mm"; dt: the control
    period, s. grade_fractions: {"A".."E": fraction}; breach_rate: grade B or worse."""
    grades = episodes["grade"].round().long()
    mean = lambda name: episodes[name].float().mean().item()  # noqa: E731
    return {
        "success_rate": mean("success"),
        "failure_rate": mean("failure"),
        "grade_fractions": {g: (grades == i).float().mean().item() for i, g in enumerate(GRADES)},
        "breach_rate": (grades >= 1).float().mean().item(),
        "medial_breach_rate": mean("medial_breach"),
        "canal_rate": mean("in_canal"),
        "tip_err_mm_mean": mean("tip_err_mm"),
        "angle_err_deg_mean": mean("angle_err_deg"),
        "depth_err_mm_mean": mean("depth_err_mm"),
        "breach_mm_mean": mean("breach_mm"),
        "ep_cost_mean": mean("Cost/breach_mm"),
        "time_s_mean": (episodes["steps"].float() * dt).mean().item(),
    }
