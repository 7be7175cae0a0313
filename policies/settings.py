"""Checks of a composed config's top-level settings and the agent's PPO numbers.

Hydra types command-line values by YAML (`num_envs=1.5` is a float, `num_envs=abc` a str,
`resume=true` a bool), so every check is strict about types: a bool is not an int, a float is
not truncated to an int, NaN and infinity are never numbers in range. `build_env` runs these
checks before any patient is prepared, so a bad setting fails in a second with a message naming
its key. The `export` and `deploy` sections are checked where they are used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from sim.envs.base import check_device
from sim.errors import require, require_int, require_number

LOGGERS = ("tensorboard", "wandb")
SPLITS = ("train", "test")
SCHEDULES = ("adaptive", "fixed")
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def require_bool(value: object, what: str) -> bool:
    """`value` if it is true or false; `InputError` naming `what` otherwise."""
    require(isinstance(value, bool), what, "true or false", repr(value))
    return value


def require_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`; `InputError` naming `what` otherwise."""
    require(isinstance(value, str) and value in choices, what, " or ".join(choices), repr(value))
    return value


def require_path(value: object, what: str) -> Path:
    """`value` as a Path if it is a non-empty string; `InputError` naming `what` otherwise."""
    require(isinstance(value, str) and value.strip() != "", what, "a path", repr(value))
    return Path(value).expanduser()


def check_log_root(value: object) -> None:
    """log_root must be a folder, or a path whose first existing ancestor is a folder (runs create it)."""
    path = require_path(value, "log_root")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    require(existing is None or existing.is_dir(), "log_root", "a folder or a path that does not exist yet", f"{value!r} ({existing} is a file)")


def check_settings(cfg: Mapping, num_envs: object = None) -> int:
    """Check the top-level settings of a composed config (conf/config.yaml) and its agent;
    returns the number of environments: `num_envs`, or cfg.num_envs when it is None."""
    num_envs = require_int(cfg.get("num_envs") if num_envs is None else num_envs, "num_envs", 1)
    seed = require_int(cfg.get("seed"), "seed", 0)
    require(seed <= MAX_SEED, "seed", f"an int <= {MAX_SEED}", seed)
    device = cfg.get("device")
    require(isinstance(device, str), "device", "cpu, cuda or cuda:<index>", repr(device))
    check_device(device)
    require_choice(cfg.get("logger"), "logger", LOGGERS)
    check_log_root(cfg.get("log_root"))
    resume = cfg.get("resume")
    if not isinstance(resume, bool):
        require_path(resume, "resume (false, true, last, a run folder or a checkpoint)")
    require_path(cfg.get("checkpoint"), "checkpoint (last, a run folder or a checkpoint file)")
    require_choice(cfg.get("split"), "split", SPLITS)
    for key in ("video", "viewer", "trajectory"):
        require_bool(cfg.get(key), key)
    require_int(cfg.get("video_steps"), "video_steps", 1)
    check_agent(cfg.get("agent"), num_envs)
    return num_envs


def check_agent(agent: Mapping | None, num_envs: int) -> None:
    """Check rsl-rl's OnPolicyRunner and PPO numbers (conf/agent/<task>.yaml) for `num_envs` environments.

    Keys of the algorithm that are absent keep rsl-rl's defaults; the runner's own keys must be set.
    """
    require(isinstance(agent, Mapping), "agent", "the agent settings (conf/agent/<task>.yaml)", type(agent).__name__)
    require_int(agent.get("max_iterations"), "agent.max_iterations", 1)
    steps = require_int(agent.get("num_steps_per_env"), "agent.num_steps_per_env", 1)
    require_int(agent.get("save_interval"), "agent.save_interval", 1)
    if "init_at_random_ep_len" in agent:
        require_bool(agent["init_at_random_ep_len"], "agent.init_at_random_ep_len")
    algorithm = agent.get("algorithm")
    require(isinstance(algorithm, Mapping), "agent.algorithm", "the PPO settings", type(algorithm).__name__)
    ints = {"num_learning_epochs": 1, "num_mini_batches": 1}
    # key: (low, high, low_open): gamma and lam are discounts in (0, 1]; rates and norms are positive.
    numbers = {
        "learning_rate": (0.0, 1.0, True),
        "gamma": (0.0, 1.0, True),
        "lam": (0.0, 1.0, True),
        "clip_param": (0.0, 1.0, True),
        "value_loss_coef": (0.0, math.inf, False),
        "entropy_coef": (0.0, math.inf, False),
        "max_grad_norm": (0.0, math.inf, True),
        "desired_kl": (0.0, math.inf, True),
    }
    for key, low in ints.items():
        if key in algorithm:
            require_int(algorithm[key], f"agent.algorithm.{key}", low)
    for key, (low, high, low_open) in numbers.items():
        if key in algorithm and not (key == "desired_kl" and algorithm[key] is None):  # rsl-rl: None turns the KL schedule off
            require_number(algorithm[key], f"agent.algorithm.{key}", low, high, low_open)
    if "schedule" in algorithm:
        require_choice(algorithm["schedule"], "agent.algorithm.schedule", SCHEDULES)
    mini_batches = algorithm.get("num_mini_batches", 4)  # rsl-rl's default
    batch = num_envs * steps
    require(
        batch >= mini_batches, "agent.algorithm.num_mini_batches",
        f"at most num_envs x agent.num_steps_per_env = {num_envs} x {steps} = {batch} (each mini-batch needs a sample)", mini_batches,
    )  # fmt: skip
    distribution = (agent.get("actor") or {}).get("distribution_cfg") or {}
    if "init_std" in distribution:
        require_number(distribution["init_std"], "agent.actor.distribution_cfg.init_std", 0.0, math.inf, low_open=True)
