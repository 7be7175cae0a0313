"""Policy evaluation: every environment runs one episode; success and final errors are reported."""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDict

from sim.envs.base import BatchedEnv

Policy = Callable[[TensorDict], torch.Tensor]


def evaluate(env: BatchedEnv, policy: Policy, on_step: Callable[[BatchedEnv], None] | None = None, min_steps: int = 0) -> dict:
    """Run `policy` (deterministic: observations -> actions) from a fresh reset until every
    environment has finished its first episode (and at least min_steps steps, for videos).

    Returns {success_rate, pos_err_mm_mean, pos_err_mm_median, ang_err_deg_mean,
    ang_err_deg_median, time_to_success_s_mean (successful episodes), episodes}. Metrics come
    from the task's per-episode log (Episode/success, position_error_mm, angle_error_deg, steps).
    """
    n = env.num_envs
    first = {k: torch.full((n,), float("nan"), device=env.device) for k in ("success", "position_error_mm", "angle_error_deg", "steps")}
    finished = torch.zeros(n, dtype=torch.bool, device=env.device)
    obs = env.reset()
    steps = 0
    with torch.inference_mode():
        while not bool(finished.all()) or steps < min_steps:
            obs, _, terminated, truncated, extras = env.step(policy(obs))
            steps += 1
            if on_step is not None:
                on_step(env)
            ended = (terminated | truncated).nonzero()[:, 0]
            if len(ended):
                new = ~finished[ended]
                for key in first:
                    first[key][ended[new]] = extras["log"][f"Episode/{key}"][new].float()
                finished[ended] = True
    success = first["success"] > 0.5
    dt = 1.0 / env.cfg.control_hz
    return {
        "success_rate": success.float().mean().item(),
        "pos_err_mm_mean": first["position_error_mm"].mean().item(),
        "pos_err_mm_median": first["position_error_mm"].median().item(),
        "ang_err_deg_mean": first["angle_error_deg"].mean().item(),
        "ang_err_deg_median": first["angle_error_deg"].median().item(),
        "time_to_success_s_mean": (first["steps"][success] * dt).mean().item() if bool(success.any()) else None,
        "episodes": n,
    }
