"""Gymnasium ids for sonolab's tasks, registered when `tasks` is imported.

    import gymnasium as gym, tasks
    envs = gym.make_vec("Sonolab-UsNav-v0", num_envs=64)                      # Isaac Lab backend
    envs = gym.make_vec("Sonolab-UsNavState-v0", num_envs=16, backend="torch", overrides=["patient=totalseg_example"])

Each id composes the Hydra config (conf/config.yaml) with its task, the given settings (keyword
arguments become `key=value` overrides; backend defaults to isaaclab) and `overrides`, builds the
task over the chosen patients (training split by default) and returns it as a
`gymnasium.vector.VectorEnv` (`sim.envs.adapters.gymnasium.GymVectorEnv`): the environments are
batched tensors inside, so the ids are vector ids (`gym.make_vec`), not single-env ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import gymnasium as gym

GYM_IDS = {"Sonolab-UsNav-v0": "us_nav", "Sonolab-UsNavState-v0": "us_nav_state"}
CONF = Path(__file__).resolve().parents[1] / "conf"


def make_vector_env(task: str, num_envs: int = 64, split: str = "train", overrides: Sequence[str] = (), backend: str = "isaaclab", **settings):
    """The task as a Gymnasium vector env; settings: any top-level config keys (device, seed, patient, probe...)."""
    from hydra import compose, initialize_config_dir

    from policies.workflow import build_env
    from sim.envs.adapters.gymnasium import GymVectorEnv

    settings.pop("render_mode", None)  # gymnasium passes it; there is nothing to render into
    keys = [f"task={task}", f"backend={backend}", *(f"{k}={v}" for k, v in settings.items()), *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=keys)
    return GymVectorEnv(build_env(cfg, split, num_envs))


def register() -> None:
    """Register every id (once)."""
    for gym_id, task in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(gym_id, vector_entry_point=make_vector_env, kwargs={"task": task})
