"""learner=distill: a student policy distilled from the task's scripted expert on rsl-rl's runner.

The agent group (conf/agent/<task>/distill.yaml) is rsl-rl's train config for its Distillation
algorithm, with the algorithm's class_name set to `ExpertDistillation`
(policies/learners/expert_distillation.py: the teacher is the task's expert, so there is no
`teacher` model to configure or load):

    obs_groups: {student: [policy, image], teacher: [critic]}
    student: {class_name: ..., distribution_cfg: {init_std: 0.2}}   # the sampled actions explore
    algorithm:
      class_name: policies.learners.expert_distillation:ExpertDistillation
      num_learning_epochs: 1
      gradient_length: 2      # steps of the rollout (each num_envs samples) per gradient step
      learning_rate: 1.0e-3
      expert_mixing: {initial: 0.5, iterations: 200}  # DAgger's beta, falling to 0
      loss_type: mse          # mse | huber

Training, checkpoints, exact resume and export (the student) are `PpoLearner`'s.
"""

from __future__ import annotations

import math
from typing import Mapping

from policies.learners.ppo import PpoLearner, require_algorithm
from policies.settings import require_choice
from sim.errors import require, require_int, require_number

ALGORITHM = "policies.learners.expert_distillation:ExpertDistillation"
LOSSES = ("mse", "huber")  # rsl-rl Distillation's loss_type


class DistillLearner(PpoLearner):
    """rsl-rl's OnPolicyRunner with the ExpertDistillation algorithm."""

    name = "distill"

    def check_agent(self, agent: Mapping | None, num_envs: int) -> None:
        """The runner's settings (as PPO's), a student model with a positive exploration std, and the
        algorithm: ExpertDistillation, epochs and gradient_length >= 1, a positive learning rate,
        expert_mixing's initial share in [0, 1] over iterations >= 1, loss_type mse or huber."""
        super().check_agent(agent, num_envs)
        require(
            isinstance(agent.get("student"), Mapping),
            "agent.student",
            "the student model's settings (rsl-rl model class_name and its arguments)",
            agent.get("student"),
        )
        require("teacher" not in agent, "agent.teacher", "absent: the teacher is the task's scripted expert", "a model")
        algorithm = agent["algorithm"]
        require_algorithm(algorithm, ALGORITHM, "distill")
        if "gradient_length" in algorithm:
            require_int(algorithm["gradient_length"], "agent.algorithm.gradient_length", 1)
        mixing = algorithm.get("expert_mixing")
        if mixing is not None:
            require(
                isinstance(mixing, Mapping) and set(mixing) <= {"initial", "iterations"},
                "agent.algorithm.expert_mixing",
                "{initial: share of steps the expert acts on at first, iterations: updates until none}",
                mixing,
            )
            if "initial" in mixing:
                require_number(mixing["initial"], "agent.algorithm.expert_mixing.initial", 0.0, 1.0)
            if "iterations" in mixing:
                require_int(mixing["iterations"], "agent.algorithm.expert_mixing.iterations", 1)
        if "loss_type" in algorithm:
            require_choice(algorithm["loss_type"], "agent.algorithm.loss_type", LOSSES)
        distribution = agent["student"].get("distribution_cfg") or {}
        if "init_std" in distribution:
            require_number(
                distribution["init_std"], "agent.student.distribution_cfg.init_std", 0.0, math.inf, low_open=True
            )
