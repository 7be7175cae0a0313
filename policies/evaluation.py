"""Policy evaluation: every environment runs one episode; the task's metrics of those episodes."""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDict

from policies.learners.base import ActionChunks
from sim.envs.base import BatchedEnv
from sim.errors import InputError
from tasks import registry

Policy = Callable[[TensorDict], torch.Tensor]
EPISODE = "Episode/"  # the per-episode metrics of extras["log"]
COST = "Cost/"  # the per-episode cost sums of extras["log"], passed to the summary under their own names


def constraint_metrics(episodes: dict[str, torch.Tensor], lengths: torch.Tensor, limits: dict[str, float]) -> dict:
    """How episodes kept cost limits {cost name: limit per episode}: ep_cost_mean (the mean episode
    cost), cost_rate (cost per environment step over all the episodes' steps) and
    constraint_satisfied (the mean episode cost within its limit), each a number where one cost is
    limited and {cost name: value} where several are. episodes: "Cost/<name>" (N,) episode sums;
    lengths: (N,) the episodes' steps."""
    per_cost = {
        name: {
            "ep_cost_mean": episodes[COST + name].mean().item(),
            "cost_rate": (episodes[COST + name].sum() / lengths.sum().clamp_min(1)).item(),
        }
        for name in limits
    }
    for name, limit in limits.items():
        per_cost[name]["constraint_satisfied"] = per_cost[name]["ep_cost_mean"] <= limit
    keys = ("ep_cost_mean", "cost_rate", "constraint_satisfied")
    if len(limits) == 1:
        (only,) = per_cost.values()
        return {key: only[key] for key in keys}
    return {key: {name: values[key] for name, values in per_cost.items()} for key in keys}


def evaluate(
    env: BatchedEnv,
    policy: Policy,
    on_step: Callable[[BatchedEnv], None] | None = None,
    min_steps: int = 0,
    cost_limits: dict[str, float] | None = None,
) -> dict:
    """Run `policy` (deterministic: observations -> actions) from a fresh reset until every
    environment has finished its first episode (and at least min_steps steps, for videos).

    Returns the metrics the task's spec declares (`TaskSpec.metrics`, e.g. success_rate,
    pos_err_mm_mean for us_nav), computed by its `summary` from each environment's first
    episode in the task's per-episode log (extras["log"]["Episode/<name>"] as "<name>", and the episode
    sums of its costs as "Cost/<name>"), and episodes; for a policy trained under cost_limits
    ({cost name: limit per episode}) also `constraint_metrics`.
    """
    task = registry.spec(env.cfg.name)
    n = env.num_envs
    first: dict[str, torch.Tensor] = {}
    finished = torch.zeros(n, dtype=torch.bool, device=env.device)
    lengths = torch.zeros(n, dtype=torch.long, device=env.device)  # each first episode's steps
    obs = env.reset()
    policy = ActionChunks(policy)  # a policy may return action chunks (N, H, A): one action per step
    steps = 0
    with torch.inference_mode():
        while not bool(finished.all()) or steps < min_steps:
            obs, _, terminated, truncated, extras = env.step(policy(obs))
            steps += 1
            lengths += ~finished
            if on_step is not None:
                on_step(env)
            ended = (terminated | truncated).nonzero()[:, 0]
            if len(ended):
                new = ~finished[ended]
                for key, value in extras["log"].items():
                    if key.startswith((EPISODE, COST)):
                        store = first.setdefault(
                            key.removeprefix(EPISODE), torch.full((n,), float("nan"), device=env.device)
                        )
                        store[ended[new]] = value[new].float()
                finished[ended] = True
    metrics = task.summary(first, env.dt)
    if set(metrics) != set(task.metrics):
        raise InputError(
            f"task {task.name!r} summary: expected its declared metrics {sorted(task.metrics)}, got {sorted(metrics)}"
        )
    if cost_limits:
        unknown = [name for name in cost_limits if COST + name not in first]
        if unknown:
            raise InputError(
                f"cost limits {unknown}: expected costs task {task.name!r} reports ({list(env.cost_units)})"
            )
        metrics.update(constraint_metrics(first, lengths, cost_limits))
    return {**metrics, "episodes": n}
