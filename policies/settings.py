"""Checks of a composed config's top-level settings, its learner and (by the learner) its agent settings.

Hydra types command-line values by YAML (`num_envs=1.5` is a float, `num_envs=abc` a str,
`resume=true` a bool), so every check is strict about types: a bool is not an int, a float is
not truncated to an int, NaN and infinity are never numbers in range. `build_env` runs these
checks before any patient is prepared, so a bad setting fails in a second with a message naming
its key. The `export` and `deploy` sections are checked where they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from policies import learners
from sim.config import build, to_container
from sim.envs.base import check_device
from sim.errors import require, require_bool, require_choice, require_int
from sim.ultrasound.probe import ProbeSpec
from tasks import registry

LOGGERS = ("tensorboard", "wandb")
SPLITS = ("train", "test")
KEEP = ("success", "all")  # record.py: which finished episodes a recording keeps
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def require_path(value: object, what: str) -> Path:
    """`value` as a Path if it is a non-empty string; `InputError` naming `what` otherwise."""
    require(isinstance(value, str) and value.strip() != "", what, "a path", repr(value))
    return Path(value).expanduser()


def check_log_root(value: object) -> None:
    """log_root must be a folder, or a path whose first existing ancestor is a folder (runs create it)."""
    path = require_path(value, "log_root")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    require(
        existing is None or existing.is_dir(),
        "log_root",
        "a folder or a path that does not exist yet",
        f"{value!r} ({existing} is a file)",
    )


def check_settings(cfg: Mapping, num_envs: object = None) -> int:
    """Check the top-level settings of a composed config (conf/config.yaml), its learner (one of
    policies.learners.names()) and its agent settings (the learner's check);
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
    require_int(cfg.get("episodes"), "episodes", 1)
    require_choice(cfg.get("keep"), "keep", KEEP)
    if cfg.get("dataset") is not None:
        require_path(cfg.get("dataset"), "dataset (null or a folder)")
    if cfg.get("probe") is not None:  # a state task renders nothing, but a misspelt probe key is still an error
        ProbeSpec.from_dict(to_container(cfg.get("probe")))
    task = to_container(cfg.get("task"))
    if isinstance(task, Mapping):  # unknown or mistyped task keys now, not after the patients are prepared
        name = task.get("name")
        build(registry.spec(name).config_class, registry.task_config(name, task), "task config")
    learners.get(cfg.get("learner")).check_agent(cfg.get("agent"), num_envs)  # the agent settings are the learner's
    return num_envs
