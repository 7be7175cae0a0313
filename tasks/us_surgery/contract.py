"""us_surgery's side of the generic tools: how its episodes are summarised (`policies.evaluation`)
and what the simulated robot tells the deploy runtime at an episode's start (`policies.deploy.sim_robot`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from policies.deploy.robot import Session
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
    "interventions_per_episode": "1",
}


def summary(episodes: Mapping[str, torch.Tensor], dt: float) -> dict:
    """The metrics of one episode per environment: episodes holds the task's per-episode log (success,
    failure, grade (index into GRADES), breach_mm, medial_breach, in_canal, tip_err_mm, angle_err_deg,
    depth_err_mm, steps, shield_interventions: (N,) each) and the breach cost's episode sum
    "Cost/breach_mm"; dt: the control period, s. grade_fractions: {"A".."E": fraction}; breach_rate:
    grade B or worse; interventions_per_episode: the mean count of steps whose action the shield
    changed (`ShieldCfg`; 0 without it)."""
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
        "interventions_per_episode": mean("shield_interventions"),
    }


def sim_session(env) -> Session:
    """Environment 0's episode as the runtime's `Session`: its patient's skin and anchor point and
    its screw plan as task arrays (plan_entry_m, plan_target_m (3,), task frame; plan_radius_m),
    the plan as planned (the simulated navigation registers it exactly)."""
    p, g = int(env.patient_idx[0]), int(env.goal_idx[0])
    skin = env.patients[p].skin
    surface = {"x0": skin.x0, "z0": skin.z0, "dx": skin.dx, "dz": skin.dz, "y": skin.y, "normal": skin.normal}
    plans = env.plans
    return Session(
        anchor_m=env.scene.anchor[p].cpu().numpy(),
        surface=surface,
        task={
            "plan_entry_m": plans.entry[p, g].cpu().numpy(),
            "plan_target_m": plans.target[p, g].cpu().numpy(),
            "plan_radius_m": np.asarray(plans.radius_m[p, g].cpu().numpy()),
        },
    )
