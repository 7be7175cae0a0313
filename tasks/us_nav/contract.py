"""us_nav's side of the generic tools: how its episodes are summarised (`policies.evaluation`)
and what the simulated robot tells the deploy runtime at an episode's start (`policies.deploy.sim_robot`)."""

from __future__ import annotations

from typing import Mapping

import torch

from policies.deploy.robot import Session

# What `summary` reports, with units ("1": a fraction); evaluation also reports "episodes".
METRICS = {
    "success_rate": "1",
    "pos_err_mm_mean": "mm",
    "pos_err_mm_median": "mm",
    "ang_err_deg_mean": "deg",
    "ang_err_deg_median": "deg",
    "time_to_success_s_mean": "s",
    "peak_force_n_median": "N",
    "peak_force_n_p95": "N",
    "force_violation_rate": "1",
    "start_pos_err_mm_mean": "mm",
    "success_rate_by_start_head_foot_mm": "1",
}
# Bins (mm) of how far head-foot from the goal an episode started: the phantoms' levels lie about
# 20 mm apart on the skin, so a start 10 mm or more away is half way to the next level.
START_HEAD_FOOT_BINS_MM = (0.0, 10.0, 20.0, 30.0)


def summary(episodes: Mapping[str, torch.Tensor], dt: float) -> dict:
    """The metrics of one episode per environment: episodes holds the task's per-episode log
    (success, position_error_mm, angle_error_deg, steps, peak_force_n: (N,) each) and the contact-force
    cost's episode sum "Cost/contact_force"; dt: the control period, s. time_to_success_s_mean is over
    the successful episodes (None without any); peak_force_n_*: the distribution of the episodes'
    highest contact force; force_violation_rate: the fraction of episodes whose force ever exceeded
    task.reward.max_force_n. start_pos_err_mm_mean: how far from the goal the episodes started
    (start_position_error_mm); success_rate_by_start_head_foot_mm: {"0-10": rate, ..., "30+": rate}
    of the episodes that started that far head-foot from the goal (start_head_foot_mm), None for a
    bin without any."""
    success = episodes["success"] > 0.5
    pos, ang = episodes["position_error_mm"], episodes["angle_error_deg"]
    return {
        "success_rate": success.float().mean().item(),
        "pos_err_mm_mean": pos.mean().item(),
        "pos_err_mm_median": pos.median().item(),
        "ang_err_deg_mean": ang.mean().item(),
        "ang_err_deg_median": ang.median().item(),
        "time_to_success_s_mean": (episodes["steps"][success] * dt).mean().item() if bool(success.any()) else None,
        "peak_force_n_median": episodes["peak_force_n"].median().item(),
        "peak_force_n_p95": episodes["peak_force_n"].quantile(0.95).item(),
        "force_violation_rate": (episodes["Cost/contact_force"] > 0).float().mean().item(),
        "start_pos_err_mm_mean": episodes["start_position_error_mm"].mean().item(),
        "success_rate_by_start_head_foot_mm": rate_by_bin(success, episodes["start_head_foot_mm"]),
    }


def rate_by_bin(success: torch.Tensor, value: torch.Tensor) -> dict[str, float | None]:
    """{"<low>-<high>": success rate, ..., "<last>+": rate} of episodes (N,) bool by value (N,) in
    the bins of START_HEAD_FOOT_BINS_MM; None where no episode falls in a bin."""
    edges = torch.tensor(START_HEAD_FOOT_BINS_MM[1:], device=value.device)
    index = torch.bucketize(value, edges, right=True)  # each episode's bin
    bins = len(START_HEAD_FOOT_BINS_MM)
    counts = torch.bincount(index, minlength=bins).tolist()
    hits = torch.bincount(index, weights=success.float(), minlength=bins).tolist()
    low, high = START_HEAD_FOOT_BINS_MM, START_HEAD_FOOT_BINS_MM[1:]
    names = [f"{a:g}-{b:g}" for a, b in zip(low, high)] + [f"{low[-1]:g}+"]
    return {name: (hit / count if count else None) for name, hit, count in zip(names, hits, counts)}


def sim_session(env) -> Session:
    """Environment 0's episode as the runtime's `Session`: its patient's skin, anchor point and
    goal (pose and, with images, goal image) and the commanded probe state it was placed with."""
    p = int(env.patient_idx[0])
    skin = env.patients[p].skin
    surface = {"x0": skin.x0, "z0": skin.z0, "dx": skin.dx, "dz": skin.dz, "y": skin.y, "normal": skin.normal}
    return Session(
        anchor_m=env.scene.anchor[p].cpu().numpy(),
        surface=surface,
        goal_pose=env.goal_pose[0].cpu().numpy(),
        goal_image=env.goal_image[0].cpu().numpy() if env.renderer is not None else None,
        start_command=(env.xz[0].cpu().numpy(), float(env.yaw[0]), env.tilt[0].cpu().numpy()),
    )
