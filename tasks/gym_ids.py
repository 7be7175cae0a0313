"""Gymnasium ids for sonolab's tasks, one per registered task (`tasks.registry`, its `gym_id`),
registered when `tasks` is imported.

Each id serves two kinds of callers:

- `gym.make_vec(id, num_envs)`: sonolab's batched task as a `gymnasium.vector.VectorEnv`
  (`sim.envs.adapters.gymnasium.GymVectorEnv`) on any backend, for any Gymnasium-vector learner:

      import gymnasium as gym, tasks
      envs = gym.make_vec("Sonolab-UsNav-v0", num_envs=64)                      # Isaac Lab backend
      envs = gym.make_vec("Sonolab-UsNavState-v0", num_envs=16, backend="torch", overrides=["patient=totalseg_example"])

  Keyword arguments become `key=value` overrides of conf/config.yaml (backend defaults to
  isaaclab), `overrides` are added as they are; the training split's patients by default.
- Isaac Lab's own workflows (`isaaclab train --task Sonolab-UsNavState-v0`, `isaaclab play`):
  `gym.make(id, cfg=...)` builds `tasks.isaaclab_env.SonolabDirectEnv` (a `DirectRLEnv`) from the
  env and rsl-rl agent config entry points below (`tasks.isaaclab_env.env_cfg_name`,
  `tasks.isaaclab_agents.runner_cfg_name`). Isaac Lab finds these ids through the
  `isaaclab.tasks` entry point in pyproject.toml. Nothing here imports Isaac Lab.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym

from tasks import registry

# Registration keys Isaac Lab reads; gym also hands them to the vector entry point, which ignores them.
ISAACLAB_KEYS = ("env_cfg_entry_point", "rsl_rl_cfg_entry_point", "default_agent")


def make_vector_env(
    task: str,
    num_envs: int = 64,
    split: str = "train",
    overrides: Sequence[str] = (),
    backend: str = "isaaclab",
    **settings,
):
    """The task as a Gymnasium vector env with `num_envs` (an int >= 1) environments; settings:
    any top-level config keys (device, seed, patient, probe...)."""
    from policies.workflow import build_env, compose_config
    from sim.envs.adapters.gymnasium import GymVectorEnv

    for key in ("render_mode", *ISAACLAB_KEYS):  # gymnasium passes render_mode; there is nothing to render into
        settings.pop(key, None)
    cfg = compose_config([f"task={task}", f"backend={backend}", *(f"{k}={v}" for k, v in settings.items()), *overrides])
    return GymVectorEnv(build_env(cfg, split, num_envs))


def env_cfg_name(task: str) -> str:
    """The Isaac Lab env config class of `task` in tasks.isaaclab_env: us_nav_state -> UsNavStateEnvCfg."""
    return "".join(word.capitalize() for word in task.split("_")) + "EnvCfg"


def runner_cfg_name(task: str) -> str:
    """The rsl-rl runner config function of `task` in tasks.isaaclab_agents: <task>_runner_cfg."""
    return f"{task}_runner_cfg"


def register() -> None:
    """Register the id of every registered task (once)."""
    for name in registry.names():
        gym_id = registry.spec(name).gym_id
        if gym_id in gym.registry:
            continue
        gym.register(
            gym_id,
            entry_point="tasks.isaaclab_env:SonolabDirectEnv",
            vector_entry_point=make_vector_env,
            disable_env_checker=True,
            kwargs={
                "task": name,
                "env_cfg_entry_point": f"tasks.isaaclab_env:{env_cfg_name(name)}",
                "rsl_rl_cfg_entry_point": f"tasks.isaaclab_agents:{runner_cfg_name(name)}",
                "default_agent": "rsl_rl",
            },
        )
