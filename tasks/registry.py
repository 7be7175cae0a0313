"""The task registry: one `TaskSpec` per task name, registered by the task's own folder.

A task folder `tasks/<task>/` registers its specs in its `__init__.py` (`register(TaskSpec(...))`);
`tasks` imports every such folder, so generic code (make_env, the Gymnasium ids, Isaac Lab's
entry points, evaluation, the viewer, export and the deploy runtime) finds a task by its name
alone and never names one. Heavy parts (the viewer drawing, the deployment side) are import
paths "module:attribute", loaded only when used (`load`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from sim.errors import InputError, require
from sim.resources import conf_dir

CONF_DIR = conf_dir()
_SPECS: dict[str, TaskSpec] = {}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task (or variant of one).

    name: the task name (Hydra `task=<name>`, conf/task/<name>.yaml; the config's `name`).
    env_class: its `BatchedEnv`, built as env_class(cfg, patients, num_envs, device=, seed=,
    probe=, backend=). config_class: the config dataclass. variant: config settings that make
    this variant (a nested mapping under the caller's settings, e.g. {"observation": {"images":
    False}}). gym_id: its Gymnasium id. agents: learner -> Hydra option of the `agent` group
    (e.g. "us_nav/ppo" for conf/agent/us_nav/ppo.yaml). expert: expert(env) -> policy
    (observations -> actions (N, A)), a scripted baseline. summary: summary(episodes, dt) ->
    {metric: value} from the first episode of every environment ({log name: (N,)} of
    extras["log"]'s Episode/<name>; dt in s), exactly the keys of `metrics` ({metric: unit}).
    drawing: "module:callable" making the viewer's task layer, drawing(plotter, probe) -> draw,
    where draw(snapshot, i) updates the task's actors for environment i of an `EnvSnapshot` and
    returns its part of the status line. controller: "module:Class" of the robot-side
    controller built from deploy.json; deployment_spec: "module:function" (env, export
    settings) -> deploy.json's task part; deploy_contract: "module:function" (task config,
    what) -> the control and action parts deploy.json must have; sim_session: "module:function"
    (env) -> the `policies.deploy.robot.Session` of environment 0 (the simulated robot). A task
    without these four (None) cannot be exported to or deployed on a robot (`deployment_part`).
    sim_robot: "module:Class" of the simulated robot, built as Class(env) (`load_sim_robot`);
    the default drives the snapshot's primary tool, a task whose robot holds another tool or
    reports more (tracked tools, signals) names its own subclass.
    """

    name: str
    env_class: type
    config_class: type
    gym_id: str
    agents: Mapping[str, str]
    expert: Callable
    summary: Callable[[Mapping[str, Any], float], dict]
    metrics: Mapping[str, str]
    drawing: str
    controller: str | None = None
    deployment_spec: str | None = None
    deploy_contract: str | None = None
    sim_session: str | None = None
    sim_robot: str = "policies.deploy.sim_robot:SimRobot"
    variant: Mapping[str, Any] = field(default_factory=dict)


def register(task: TaskSpec) -> TaskSpec:
    """Add `task`; InputError if its name or Gymnasium id is taken by another spec."""
    require(isinstance(task, TaskSpec), "task spec", "a tasks.registry.TaskSpec", type(task).__name__)
    known = _SPECS.get(task.name)
    require(
        known is None or known == task,
        f"task {task.name!r}",
        "a name no other task registered",
        "a second, different spec",
    )
    taken = [s.name for s in _SPECS.values() if s.gym_id == task.gym_id and s.name != task.name]
    require(
        not taken, f"task {task.name!r} gym_id", f"an id no other task uses ({task.gym_id!r} is {taken}'s)", task.gym_id
    )
    _SPECS[task.name] = task
    return task


def names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_SPECS)


def spec(name: object) -> TaskSpec:
    """The spec of task `name`; InputError listing the registered names for any other."""
    if not isinstance(name, str) or name not in _SPECS:
        raise InputError(f"task {name!r}: expected one of {names()}")
    return _SPECS[name]


def task_config(name: str, settings: Mapping) -> dict:
    """The variant's settings with `settings` (a task config mapping) over them: what the task's
    config class is built from."""
    return _merge(spec(name).variant, settings)


def _merge(base: Mapping, over: Mapping) -> dict:
    """base with over's values over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def agent_option(name: str, learner: str) -> str:
    """The Hydra option of the `agent` group for task `name` under `learner`, e.g. "us_nav/ppo"."""
    agents = spec(name).agents
    if learner not in agents:
        raise InputError(f"learner {learner!r} for task {name!r}: expected one of {sorted(agents)}")
    return agents[learner]


def agent_config_path(name: str, learner: str) -> Path:
    """conf/agent/<option>.yaml: task `name`'s default settings for `learner`."""
    return CONF_DIR / "agent" / f"{agent_option(name, learner)}.yaml"


DEPLOYMENT_PARTS = ("controller", "deployment_spec", "deploy_contract", "sim_session")


def deployment_part(name: str, part: str) -> Any:
    """The loaded deployment `part` (one of DEPLOYMENT_PARTS) of task `name`; InputError naming the
    task, and the tasks that have one, where it registered none (it has no robot deployment)."""
    require(part in DEPLOYMENT_PARTS, "deployment part", f"one of {list(DEPLOYMENT_PARTS)}", repr(part))
    path = getattr(spec(name), part)
    if path is None:
        able = [n for n in names() if getattr(_SPECS[n], part) is not None]
        raise InputError(
            f"task {name!r}: expected a task with a robot deployment (its {part}); {name!r} has none yet, "
            f"export and deploy work for {able}"
        )
    return load(path, f"task {name!r} {part}")


def load_sim_robot(name: str) -> type:
    """The simulated robot class of task `name` (its spec's sim_robot)."""
    return load(spec(name).sim_robot, f"task {name!r} sim_robot")


def load(path: str, what: str) -> Any:
    """The attribute an import path "module:attribute" names (`what`: which spec field, for errors)."""
    module, _, attribute = path.partition(":")
    require(bool(module) and bool(attribute), what, "an import path module:attribute", repr(path))
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise InputError(f"{what} {path!r}: expected an importable module:attribute ({err})") from err
