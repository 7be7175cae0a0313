"""Checkpoint files: written atomically, found by iteration, validated on load.

A checkpoint is written to a hidden temporary file in the run folder, flushed to disk and then
renamed over `model_<iteration>.pt` (an atomic rename on POSIX), so a process killed while
writing leaves only the temporary file, which is never picked up.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from sim.errors import InputError

FORMAT = "sonolab-checkpoint-1"
NAME = re.compile(r"^model_(\d+)\.pt$")


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` so that `path` is either absent, the old file or the complete new one."""
    path = Path(path)
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
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or foreign files raise many kinds of errors
        raise InputError(f"checkpoint {path}: expected a complete sonolab checkpoint, could not read it ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"checkpoint {path}: expected a sonolab checkpoint (format {FORMAT!r})")
    return data
