"""learner=ppo_lag: PPO-Lagrangian on rsl-rl's runner (`PpoLagrangian`, `policies.learners.ppo_lagrangian`).

The agent group (conf/agent/<task>/ppo_lag.yaml) is rsl-rl's train config with the algorithm's
class_name set to PpoLagrangian and its constraint settings beside PPO's:

    algorithm:
      class_name: policies.learners.ppo_lagrangian:PpoLagrangian
      cost_limits: {breach_mm: 0.1}     # per episode, in the cost's units (the task's cost_units)
      lagrangian: {kp: 0.0, ki: 0.05, kd: 0.0, smoothing: 0.0, initial: 0.0}
      cost_window: 256                  # finished episodes the measured episode cost averages

Training, checkpoints (which hold the cost critic and the multipliers' state), exact resume and
export (the actor only) are PPO's (`PpoLearner`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from omegaconf import DictConfig

from policies.learners.base import TrainedPolicy
from policies.learners.ppo import PpoLearner, require_algorithm
from policies.settings import require_bool
from sim.envs.base import BatchedEnv
from sim.errors import require, require_int, require_number

ALGORITHM = "policies.learners.ppo_lagrangian:PpoLagrangian"
GAINS = ("kp", "ki", "kd", "initial")  # >= 0 each; smoothing in [0, 1)


def cost_limits(agent: Mapping) -> dict[str, float]:
    """{cost name: limit} of the agent settings' algorithm.cost_limits."""
    return {str(k): float(v) for k, v in agent["algorithm"]["cost_limits"].items()}


class PpoLagLearner(PpoLearner):
    """rsl-rl's OnPolicyRunner with the PpoLagrangian algorithm."""

    name = "ppo_lag"

    def check_agent(self, agent: Mapping | None, num_envs: int) -> None:
        """PPO's checks, and the constraint settings: the algorithm is PpoLagrangian, every cost
        limit a number >= 0, the gains >= 0, smoothing in [0, 1), cost_window >= 1 episode."""
        super().check_agent(agent, num_envs)
        algorithm = agent["algorithm"]
        require_algorithm(algorithm, ALGORITHM, "ppo_lag")
        limits = algorithm.get("cost_limits")
        require(
            isinstance(limits, Mapping) and len(limits) > 0,
            "agent.algorithm.cost_limits",
            "{cost name: limit per episode in the cost's units}, at least one",
            limits,
        )
        for name, limit in limits.items():
            require_number(limit, f"agent.algorithm.cost_limits.{name}", 0.0)
        gains = algorithm.get("lagrangian") or {}
        require(isinstance(gains, Mapping), "agent.algorithm.lagrangian", "a mapping of PID gains", gains)
        unknown = sorted(set(gains) - {*GAINS, "smoothing"})
        require(not unknown, "agent.algorithm.lagrangian", f"keys among {[*GAINS, 'smoothing']}", unknown)
        for key in GAINS:
            if key in gains:
                require_number(gains[key], f"agent.algorithm.lagrangian.{key}", 0.0)
        if "smoothing" in gains:
            require_number(gains["smoothing"], "agent.algorithm.lagrangian.smoothing", 0.0, 1.0)
            require(gains["smoothing"] < 1.0, "agent.algorithm.lagrangian.smoothing", "below 1", gains["smoothing"])
        if "cost_window" in algorithm:
            require_int(algorithm["cost_window"], "agent.algorithm.cost_window", 1)
        if "cost_value_loss_coef" in algorithm:
            require_number(algorithm["cost_value_loss_coef"], "agent.algorithm.cost_value_loss_coef", 0.0, math.inf)
        for key in ("cost_gamma", "cost_lam"):
            if algorithm.get(key) is not None:
                require_number(algorithm[key], f"agent.algorithm.{key}", 0.0, 1.0, low_open=True)
        if "normalize_advantage_per_mini_batch" in algorithm:
            per_batch = require_bool(
                algorithm["normalize_advantage_per_mini_batch"], "agent.algorithm.normalize_advantage_per_mini_batch"
            )
            require(
                not per_batch,
                "agent.algorithm.normalize_advantage_per_mini_batch",
                "false (reward and cost advantages are combined per rollout)",
                per_batch,
            )

    def load_policy(self, cfg: DictConfig, env: BatchedEnv, checkpoint: Path) -> TrainedPolicy:
        policy = super().load_policy(cfg, env, checkpoint)
        policy.cost_limits = cost_limits(cfg.agent)
        return policy
