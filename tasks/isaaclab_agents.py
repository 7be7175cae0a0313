"""rsl-rl agent configs for Isaac Lab's workflows (`rsl_rl_cfg_entry_point` of tasks.gym_ids):
sonolab's own agent group for learner=ppo (conf/agent/<task>/ppo.yaml, the plain dict
scripts/train.py hands to rsl-rl) as Isaac Lab's `RslRlOnPolicyRunnerCfg`, so `isaaclab train`
trains with the same networks and PPO settings. Settings the YAML leaves out take rsl-rl's own defaults.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from isaaclab_rl.rsl_rl import (
    RslRlCNNModelCfg,
    RslRlMLPModelCfg,
    RslRlOnPolicyRunnerCfg,
    RslRlPpoAlgorithmCfg,
    RslRlRNNModelCfg,
)
from omegaconf import OmegaConf
from rsl_rl import models as rsl_models
from rsl_rl.algorithms import PPO
from rsl_rl.utils import resolve_callable

from policies.workflow import compose_config
from sim.errors import InputError
from tasks import registry
from tasks.gym_ids import runner_cfg_name

MODELS = {"MLPModel": RslRlMLPModelCfg, "CNNModel": RslRlCNNModelCfg, "RNNModel": RslRlRNNModelCfg}
RSL_MODELS = {name: getattr(rsl_models, name) for name in MODELS}
DISTRIBUTIONS = {
    "GaussianDistribution": RslRlMLPModelCfg.GaussianDistributionCfg,
    "HeteroscedasticGaussianDistribution": RslRlMLPModelCfg.HeteroscedasticGaussianDistributionCfg,
}


def _lookup(table: dict, name: str, where: str):
    if name not in table:
        raise InputError(f"{where} {name!r}: expected one of {sorted(table)} for Isaac Lab's rsl-rl configs")
    return table[name]


def _model_kind(name: str, where: str) -> str:
    """The rsl-rl model `name` is or subclasses (a key of MODELS): Isaac Lab's config of that
    kind carries the class name through to rsl-rl, which builds the subclass."""
    if name in MODELS:
        return name
    try:
        model = resolve_callable(name)
    except (ImportError, AttributeError, ValueError) as error:
        raise InputError(f"{where} {name!r}: not an importable model class ({error})") from error
    subclassed = [k for k in ("RNNModel", "CNNModel", "MLPModel") if issubclass_of(model, RSL_MODELS[k])]
    if not subclassed:
        raise InputError(f"{where} {name!r}: expected one of {sorted(MODELS)} or a subclass of one")
    return subclassed[0]


def issubclass_of(value: object, base: type) -> bool:
    return isinstance(value, type) and issubclass(value, base)


def model_cfg(spec: dict, where: str) -> RslRlMLPModelCfg:
    """An actor or critic of the agent group as Isaac Lab's model config."""
    spec = dict(spec)
    model = MODELS[_model_kind(spec.setdefault("class_name", "MLPModel"), f"{where}.class_name")]
    distribution = spec.pop("distribution_cfg", None)
    if distribution is not None:
        distribution = dict(distribution)
        spec["distribution_cfg"] = _lookup(
            DISTRIBUTIONS, distribution.pop("class_name"), f"{where}.distribution_cfg.class_name"
        )(**distribution)
    if "cnn_cfg" in spec:
        spec["cnn_cfg"] = RslRlCNNModelCfg.CNNCfg(**spec["cnn_cfg"])
    # A subclass's own settings (policies.models.correlation: correlation_cfg) are not fields of
    # Isaac Lab's config class: they ride along as attributes, which its class_to_dict hands on.
    fields = {f.name for f in dataclasses.fields(model)}
    own = {k: spec.pop(k) for k in list(spec) if k not in fields}
    cfg = model(**spec)
    for key, value in own.items():
        setattr(cfg, key, value)
    return cfg


def ppo_cfg(spec: dict) -> RslRlPpoAlgorithmCfg:
    """The PPO group, with rsl-rl's defaults for what it leaves out."""
    spec = dict(spec)
    if spec.pop("class_name", "PPO") != "PPO":
        raise InputError(
            f"agent.algorithm.class_name {spec.get('class_name')!r}: Isaac Lab's on-policy runner config expects PPO"
        )
    defaults = {
        name: p.default
        for name, p in inspect.signature(PPO.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    fields = set(RslRlPpoAlgorithmCfg.__dataclass_fields__)
    return RslRlPpoAlgorithmCfg(**{**{k: v for k, v in defaults.items() if k in fields and v is not None}, **spec})


def runner_cfg(task: str) -> RslRlOnPolicyRunnerCfg:
    """sonolab's PPO agent config of `task` (conf/agent/<task>/ppo.yaml) for Isaac Lab's rsl-rl
    runner. The device is the GPU where there is one (override with agent.device=cpu)."""
    cfg = compose_config([f"task={task}", "learner=ppo"])  # Isaac Lab's rsl-rl workflow runs PPO
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    return RslRlOnPolicyRunnerCfg(
        seed=int(cfg.seed),
        device="cuda:0" if torch.cuda.is_available() else "cpu",
        experiment_name=f"sonolab_{task}",
        num_steps_per_env=agent.pop("num_steps_per_env"),
        max_iterations=agent.pop("max_iterations"),
        save_interval=agent.pop("save_interval"),
        init_at_random_ep_len=agent.pop("init_at_random_ep_len"),
        obs_groups=agent.pop("obs_groups"),
        actor=model_cfg(agent.pop("actor"), "agent.actor"),
        critic=model_cfg(agent.pop("critic"), "agent.critic"),
        algorithm=ppo_cfg(agent.pop("algorithm")),
        **agent,
    )


def task_runner_cfg(task: str):
    """A function of no arguments returning `runner_cfg(task)` (what an rsl_rl_cfg_entry_point names)."""

    def make() -> RslRlOnPolicyRunnerCfg:
        return runner_cfg(task)

    make.__name__ = make.__qualname__ = runner_cfg_name(task)
    return make


# One entry point per registered task: us_nav_runner_cfg, us_nav_state_runner_cfg, ...
globals().update({runner_cfg_name(name): task_runner_cfg(name) for name in registry.names()})
