"""Tasks: one folder per task (config dataclass, plain MDP terms, its registration), found by name
in `tasks.registry`. Importing `tasks` imports every task package under it (each registers its
specs in its `__init__.py`) and registers their Gymnasium ids."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Mapping, Sequence

import torch

from sim.anatomy.patient import Patient
from sim.envs.base import BatchedEnv
from tasks import gym_ids, registry


def _import_task_packages() -> None:
    """Import every sub-package of tasks/ (each task folder registers itself on import)."""
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            importlib.import_module(f"{__name__}.{module.name}")


def make_env(
    task_cfg: Mapping,
    patients: Sequence[Patient],
    num_envs: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    probe: str | Mapping = "linear",
    backend: str | Mapping = "torch",
) -> BatchedEnv:
    """The environment of the registered task `task_cfg["name"]` over `patients`: task_cfg (a
    mapping of the task's settings, over its variant's, or a built config) and the scene options
    probe (the ultrasound probe: a preset name or a mapping of `ProbeSpec` fields) and backend (a
    name or Hydra's `backend` group as a mapping {name, ...settings})."""
    name = task_cfg.get("name") if isinstance(task_cfg, Mapping) else getattr(task_cfg, "name", None)
    task = registry.spec(name)
    settings = registry.task_config(name, task_cfg) if isinstance(task_cfg, Mapping) else task_cfg
    return task.env_class(settings, patients, num_envs, device=device, seed=seed, probe=probe, backend=backend)


_import_task_packages()
gym_ids.register()
