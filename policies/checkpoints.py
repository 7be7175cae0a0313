"""Checkpoint files: written atomically, found by iteration, validated on load, never executed.

A checkpoint is written to a hidden temporary file in the run folder, flushed to disk and then
renamed over `model_<iteration>.pt` (an atomic rename on POSIX), so a process killed while
writing leaves only the temporary file, which is never picked up (and is removed when the run
is resumed).

A checkpoint holds only tensors, numbers, strings, None and plain containers, and is read with
`torch.load(weights_only=True)`: a crafted file cannot run code when it is loaded. It records
the task and observation layout it was trained for, so a checkpoint of another task is refused
with a message naming both before any weights are copied.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from sim.envs.base import BatchedEnv
from sim.errors import InputError, require

FORMAT = "sonolab-checkpoint-1"
NAME = re.compile(r"^model_(\d+)\.pt$")
TEMPORARY = re.compile(r"^\.model_\d+\.pt\..+\.tmp$")  # atomic_save's temporary files
SCALARS = (bool, int, float, str, type(None))


def plain(obj: object, where: str = "checkpoint") -> object:
    """`obj` with numpy arrays as tensors and numpy scalars as Python numbers, so that
    `torch.load(weights_only=True)` reads it back; TypeError naming the entry for anything else
    than tensors, numbers, strings, None, dicts (OrderedDicts keep their metadata), lists and tuples."""
    if isinstance(obj, np.generic):  # before the scalars: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, torch.Tensor) or type(obj) in SCALARS:
        return obj
    if type(obj) in (dict, OrderedDict):
        out = copy.copy(obj)  # the same dict type with its attributes (a state_dict's _metadata)
        for key, value in obj.items():
            out[key] = plain(value, f"{where}[{key!r}]")
        return out
    if type(obj) in (list, tuple):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"{where}: a {type(obj).__name__} cannot be stored in a checkpoint (weights_only loading refuses it)"
    )


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save `obj` (made `plain`) to `path` so that `path` is either absent, the old file or the complete
    new one."""
    path = Path(path)
    obj = plain(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints `model_<it>.pt` in run_dir, by iteration (temporary files excluded)."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("model_*.pt") if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed checkpoint writes left in run_dir; returns them."""
    found = sorted(p for p in Path(run_dir).glob(".model_*.tmp") if TEMPORARY.match(p.name) and p.is_file())
    for p in found:
        p.unlink(missing_ok=True)
    return found


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The highest-iteration checkpoint in run_dir; InputError when there is none."""
    found = checkpoints(run_dir)
    if not found:
        raise InputError(f"run folder {run_dir}: expected checkpoints model_<iteration>.pt, found none")
    return found[-1]


def latest_run(task_log_dir: str | os.PathLike) -> Path:
    """The newest run folder (by name: timestamps) under logs/<task>/ that holds a checkpoint."""
    root = Path(task_log_dir)
    runs = sorted(p for p in root.glob("*") if p.is_dir() and checkpoints(p)) if root.is_dir() else []
    if not runs:
        raise InputError(f"log folder {root}: expected a run folder with checkpoints, found none")
    return runs[-1]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A sonolab checkpoint's contents; InputError naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path}: expected an existing file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False; name only what it refused.
        detail = str(err.__context__ or "").split(". Please")[0].split("\n")[0]
        raise InputError(
            f"checkpoint {path}: expected only tensors and plain containers, the file contains other objects "
            f"(refusing to unpickle arbitrary code: {detail or 'unsupported pickle'})"
        ) from err
    except Exception as err:  # truncated or foreign files raise many kinds of errors
        raise InputError(
            f"checkpoint {path}: expected a complete sonolab checkpoint, could not read it ({err})"
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"checkpoint {path}: expected a sonolab checkpoint (format {FORMAT!r})")
    return data


def layout(env: BatchedEnv) -> dict:
    """What a policy trained on `env` fits: {"task": name, "observations": {group: shape without
    the batch dimension}, "actions": action dimension}."""
    groups = {name: list(value.shape[1:]) for name, value in env.get_observations().items()}
    return {"task": str(env.cfg.name), "observations": groups, "actions": int(env.num_actions)}


def describe(record: dict) -> str:
    """A `layout` record in words: 'us_nav_state (policy (26,), critic (30,), actions 5)'."""
    groups = ", ".join(f"{name} {tuple(shape)}" for name, shape in record["observations"].items())
    return f"{record['task']} ({groups}, actions {record['actions']})"


def check_compatible(data: dict, path: str | os.PathLike, current: dict, model_state: dict[str, dict]) -> None:
    """InputError unless checkpoint `data` (from `path`) fits this run: its recorded layout equals
    `current` (`layout` of this run's environment) and its model tensors have the names and shapes
    of `model_state` ({"actor_state_dict": state_dict, ...} of this run's freshly built models).
    The shapes are also what is compared for checkpoints written before layouts were recorded."""
    recorded = data.get("layout")
    here = f"this run is task {describe(current)}"
    if recorded is not None:
        well_formed = (
            isinstance(recorded, dict) and set(recorded) == set(current) and isinstance(recorded["observations"], dict)
        )
        require(
            well_formed, f"checkpoint {path}: layout", f"keys {sorted(current)} with observations a mapping", recorded
        )
    if recorded is not None and recorded != current:
        raise InputError(
            f"checkpoint {path}: trained for task {describe(recorded)}, "
            f"{here}: expected a checkpoint of this task and observation layout"
        )
    for key, state in model_state.items():
        theirs = data.get(key)
        if not isinstance(theirs, dict):
            raise InputError(f"checkpoint {path}: expected {key} (the model's tensors), got {type(theirs).__name__}")
        if set(theirs) != set(state):
            missing, extra = sorted(set(state) - set(theirs)), sorted(set(theirs) - set(state))
            parts = [f"lacks {missing[:3]}" if missing else "", f"has unexpected {extra[:3]}" if extra else ""]
            detail = f"{key}: the checkpoint {' and '.join(p for p in parts if p)}"
        else:
            detail = next(
                (
                    f"{key}[{name!r}] has shape {tuple(getattr(theirs[name], 'shape', ()))} "
                    f"there and {tuple(t.shape)} here"
                    for name, t in state.items()
                    if not isinstance(theirs[name], torch.Tensor) or theirs[name].shape != t.shape
                ),
                None,
            )
        if detail:
            trained = (
                f"trained for task {describe(recorded)}"
                if recorded is not None
                else "trained for another task or observation layout"
            )
            raise InputError(
                f"checkpoint {path}: {trained} ({detail}), {here}: "
                "expected a checkpoint of this task, observation layout and agent network"
            )
