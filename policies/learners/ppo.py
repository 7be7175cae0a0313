"""learner=ppo: rsl-rl's on-policy runner (`policies.runner.Runner`: atomic checkpoints, exact resume).

The agent group (conf/agent/<task>/ppo.yaml) is rsl-rl's plain train config, passed through
unchanged: rsl-rl picks the algorithm (`agent.algorithm.class_name`, PPO by default) and the
models (`agent.actor.class_name`, ...) by name. A learner built on rsl-rl (e.g. PPO with a cost
critic) subclasses `PpoLearner` and registers itself in policies/learners/__init__.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from omegaconf import DictConfig, OmegaConf

from policies.export import export_policy
from policies.learners.base import Learner, TrainedPolicy
from policies.runner import Runner
from policies.settings import require_bool, require_choice
from policies.workflow import train_config
from sim.envs.base import BatchedEnv
from sim.errors import require, require_int, require_number
from sim.resources import checkout_dir

SCHEDULES = ("adaptive", "fixed")
# key: (low, high, low_open): gamma and lam are discounts in (0, 1]; rates and norms are positive.
NUMBERS = {
    "learning_rate": (0.0, 1.0, True),
    "gamma": (0.0, 1.0, True),
    "lam": (0.0, 1.0, True),
    "clip_param": (0.0, 1.0, True),
    "value_loss_coef": (0.0, math.inf, False),
    "entropy_coef": (0.0, math.inf, False),
    "max_grad_norm": (0.0, math.inf, True),
    "desired_kl": (0.0, math.inf, True),
}
INTS = {"num_learning_epochs": 1, "num_mini_batches": 1}


def require_algorithm(algorithm: Mapping, target: str, learner: str) -> None:
    """InputError unless agent.algorithm.class_name is `target`, the algorithm learner `learner` runs."""
    require(
        algorithm.get("class_name") == target,
        "agent.algorithm.class_name",
        f"{target!r} for learner={learner}",
        algorithm.get("class_name"),
    )


class PpoLearner(Learner):
    """rsl-rl's OnPolicyRunner over the task environment."""

    name = "ppo"

    def check_agent(self, agent: Mapping | None, num_envs: int) -> None:
        """Check rsl-rl's OnPolicyRunner and PPO numbers for `num_envs` environments.

        Keys of the algorithm that are absent keep rsl-rl's defaults; the runner's own keys must be set.
        """
        require(
            isinstance(agent, Mapping), "agent", "the agent settings (conf/agent/<task>/ppo.yaml)", type(agent).__name__
        )
        require_int(agent.get("max_iterations"), "agent.max_iterations", 1)
        steps = require_int(agent.get("num_steps_per_env"), "agent.num_steps_per_env", 1)
        require_int(agent.get("save_interval"), "agent.save_interval", 1)
        if "init_at_random_ep_len" in agent:
            require_bool(agent["init_at_random_ep_len"], "agent.init_at_random_ep_len")
        algorithm = agent.get("algorithm")
        require(isinstance(algorithm, Mapping), "agent.algorithm", "the PPO settings", type(algorithm).__name__)
        for key, low in INTS.items():
            if key in algorithm:
                require_int(algorithm[key], f"agent.algorithm.{key}", low)
        for key, (low, high, low_open) in NUMBERS.items():
            if key in algorithm and not (
                key == "desired_kl" and algorithm[key] is None
            ):  # rsl-rl: None turns the KL schedule off
                require_number(algorithm[key], f"agent.algorithm.{key}", low, high, low_open)
        if "schedule" in algorithm:
            require_choice(algorithm["schedule"], "agent.algorithm.schedule", SCHEDULES)
        mini_batches = algorithm.get("num_mini_batches", 4)  # rsl-rl's default
        batch = num_envs * steps
        require(
            batch >= mini_batches,
            "agent.algorithm.num_mini_batches",
            (
                f"at most num_envs x agent.num_steps_per_env = {num_envs} x {steps} = {batch} "
                "(each mini-batch needs a sample)"
            ),
            mini_batches,
        )
        distribution = (agent.get("actor") or {}).get("distribution_cfg") or {}
        if "init_std" in distribution:
            require_number(
                distribution["init_std"], "agent.actor.distribution_cfg.init_std", 0.0, math.inf, low_open=True
            )

    def train(self, cfg: DictConfig, env: BatchedEnv, run_dir: Path, checkpoint: Path | None) -> None:
        runner = Runner(
            env, train_config(cfg), str(run_dir), cfg.device, env_cfg=OmegaConf.to_container(cfg, resolve=True)
        )
        if checkout_dir() is not None:  # an installed sonolab has no repository to record (git.txt says its version)
            runner.add_git_repo_to_log(str(checkout_dir()))
        total = int(cfg.agent.max_iterations)
        start = runner.resume(checkpoint) if checkpoint is not None else 0
        if start < total:
            runner.learn(
                total - start, init_at_random_ep_len=bool(cfg.agent.init_at_random_ep_len) and checkpoint is None
            )

    def load_policy(self, cfg: DictConfig, env: BatchedEnv, checkpoint: Path) -> TrainedPolicy:
        runner = Runner(env, train_config(cfg), None, cfg.device)
        data = runner.load(str(checkpoint))
        actor = runner.get_inference_policy(cfg.device)  # the actor in eval mode: its forward is the action mean
        inputs = [
            *actor.obs_groups,
            *getattr(actor, "obs_groups_2d", []),
        ]  # export checks it has one 1-D group (actor_inputs)
        return TrainedPolicy(actor, inputs, int(data["iter"]))

    def export(self, policy: TrainedPolicy, env: BatchedEnv, folder: Path, spec: dict, samples: int) -> Path:
        return export_policy(policy.act, env, folder, spec, samples)
