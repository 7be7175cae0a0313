"""Tasks: one folder per task (config dataclass + plain MDP terms), registered by short name."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sim.anatomy.patient import Patient
from sim.envs.base import BatchedEnv
from sim.errors import InputError
from tasks import gym_ids
from tasks.us_nav.env import UsNavEnv

# Task name -> environment class; the config (Hydra `task.*`) picks the variant, e.g. us_nav_state
# is us_nav with observation.images = false.
TASKS: dict[str, type[BatchedEnv]] = {"us_nav": UsNavEnv, "us_nav_state": UsNavEnv}


def make_env(
    task_cfg: Mapping,
    patients: Sequence[Patient],
    num_envs: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    probe: str | Mapping = "linear",
    backend: str | Mapping = "torch",
) -> BatchedEnv:
    """The environment of task `task_cfg["name"]` over `patients`; backend: a name or Hydra's
    `backend` group as a mapping {name, ...settings}."""
    name = task_cfg.get("name") if isinstance(task_cfg, Mapping) else getattr(task_cfg, "name", None)
    if name not in TASKS:
        raise InputError(f"task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name](task_cfg, patients, num_envs, device=device, seed=seed, probe=probe, backend=backend)


gym_ids.register()
