"""Learners by name: the `learner` setting (conf/config.yaml, conf/learner/<name>.yaml) picks one.

A learner is a `Learner` subclass (policies/learners/base.py) registered here by name as
"module:Class"; it is imported only when it is used, so checking settings loads no learner
library. A new learner subclasses one (e.g. `PpoLearner`) or `Learner`, is added to `LEARNERS`
(or `register`ed), and brings conf/learner/<name>.yaml and conf/agent/<task>/<name>.yaml.
"""

from __future__ import annotations

import importlib

from policies.learners.base import ActionChunks, Learner, Policy, TrainedPolicy
from sim.errors import require

__all__ = ["LEARNERS", "ActionChunks", "Learner", "Policy", "TrainedPolicy", "get", "names", "register"]

# name -> "module:Class" of its Learner subclass
LEARNERS: dict[str, str] = {
    "ppo": "policies.learners.ppo:PpoLearner",
    "ppo_lag": "policies.learners.ppo_lag:PpoLagLearner",
    "diffusion": "policies.learners.diffusion:DiffusionLearner",
    "distill": "policies.learners.distill:DistillLearner",
}


def register(name: str, target: str) -> None:
    """Make learner `name` ("module:Class" of a Learner subclass) available to get()."""
    require(isinstance(name, str) and name.isidentifier(), "learner name", "an identifier", repr(name))
    require(isinstance(target, str) and target.count(":") == 1, f"learner {name}", "'module:Class'", repr(target))
    LEARNERS[name] = target


def names() -> list[str]:
    """The registered learners' names, sorted."""
    return sorted(LEARNERS)


def get(name: object) -> Learner:
    """The learner registered as `name`; InputError listing the registered ones for any other."""
    require(isinstance(name, str) and name in LEARNERS, "learner", f"one of {names()}", repr(name))
    module, cls = LEARNERS[name].split(":")
    learner = getattr(importlib.import_module(module), cls)
    require(
        isinstance(learner, type) and issubclass(learner, Learner),
        f"learner {name}",
        f"a Learner subclass at {LEARNERS[name]}",
        learner,
    )
    return learner()
