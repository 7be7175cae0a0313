"""Checkpoints never execute code, fit only their own task, and runs clean up after themselves."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import checkpoints
from policies.runner import Runner
from policies.workflow import build_env, compose_config, train_config
from scripts.play import play
from scripts.train import train
from sim.errors import InputError
from tests.tasks_helpers import ROOT, SMALL_RUN

TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
PLAY = [sys.executable, str(ROOT / "scripts" / "play.py")]
TINY = [
    "task=us_nav_state",
    "num_envs=4",
    "agent.num_steps_per_env=4",
    "agent.save_interval=1",
    "agent.algorithm.num_mini_batches=2",
    *SMALL_RUN,
]
STATE_LAYOUT = {"task": "us_nav_state", "observations": {"policy": [16], "critic": [30]}, "actions": 5}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


class Touch:
    """Unpickling this creates `marker`: the stand-in for arbitrary code in a crafted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like a sonolab checkpoint and creates `marker` when unpickled."""
    torch.save({"format": checkpoints.FORMAT, "iter": 1, "payload": Touch(marker)}, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of a two-iteration us_nav_state training (checkpoints model_0.pt, model_1.pt)."""
    root = tmp_path_factory.mktemp("logs")
    out = run([*TRAIN, *TINY, "agent.max_iterations=2", f"log_root={root}"])
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest / run_dir.name))


def train_with(*overrides: str) -> str:
    """scripts/train.py's training in this process, with `overrides` as its command line."""
    return train(compose_config(overrides), overrides)


def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path, trained):
    live = crafted_checkpoint(tmp_path / "live.pt", tmp_path / "ran_live")
    torch.load(live, weights_only=False)  # the file is a real exploit: a plain torch.load runs it
    assert (tmp_path / "ran_live").exists()

    marker = tmp_path / "ran"
    evil = crafted_checkpoint(tmp_path / "model_3.pt", marker)
    with pytest.raises(InputError, match=r"model_3\.pt.*other objects.*refusing to unpickle arbitrary code"):
        checkpoints.load_checkpoint(evil)
    played = run([*PLAY, f"checkpoint={evil}"])
    assert played.returncode == 2 and played.stderr.startswith(f"error: checkpoint {evil}:"), played.stderr[-3000:]
    assert len(played.stderr.strip().splitlines()) == 1 and "refusing to unpickle arbitrary code" in played.stderr
    # resume reads the checkpoint after building the run's environment and models
    run_dir = tmp_path / "crafted_run"
    run_dir.mkdir()
    shutil.copy(trained / "config.yaml", run_dir)
    crafted_checkpoint(run_dir / "model_5.pt", marker)
    with pytest.raises(InputError, match="refusing to unpickle arbitrary code"):
        train_with(f"resume={run_dir}")
    assert not marker.exists()


def test_checkpoints_hold_only_plain_data_with_their_layout(trained):
    data = torch.load(checkpoints.latest_checkpoint(trained), weights_only=True)
    assert data["format"] == checkpoints.FORMAT and data["iter"] == 1
    assert data["layout"] == STATE_LAYOUT
    assert data["env_state"]["generator"].dtype == torch.uint8


def test_atomic_save_stores_numpy_as_plain_data_and_refuses_objects(tmp_path):
    state = OrderedDict(w=torch.ones(2))
    state._metadata = {"": {"version": 1}}  # what load_state_dict reads from a module's state_dict
    obj = {
        "format": checkpoints.FORMAT,
        "array": np.arange(3.0),
        "scalar": np.float64(2.5),
        "count": np.int64(4),
        "model": state,
    }
    data = checkpoints.load_checkpoint(checkpoints.atomic_save(obj, tmp_path / "model_0.pt"))
    assert torch.equal(data["array"], torch.arange(3.0, dtype=torch.float64))
    assert type(data["scalar"]) is float and data["scalar"] == 2.5 and type(data["count"]) is int
    assert data["model"]._metadata == {"": {"version": 1}}
    with pytest.raises(TypeError, match=r"checkpoint\['infos'\]\['when'\]: a set"):
        checkpoints.atomic_save({"format": checkpoints.FORMAT, "infos": {"when": {1, 2}}}, tmp_path / "model_1.pt")
    assert not list(tmp_path.glob("*model_1*"))


def test_checkpoint_of_another_task_is_refused_naming_both(tmp_path, trained):
    cfg = compose_config(
        ["task=us_nav", "num_envs=2", "task.renderer.compile=false", "task.observation.image_size=16", *TINY[2:]]
    )
    torch.manual_seed(0)
    runner = Runner(build_env(cfg, "train"), train_config(cfg), None, "cpu")
    before = {k: v.clone() for k, v in runner.alg.get_policy().state_dict().items()}
    checkpoint = checkpoints.latest_checkpoint(trained)
    both = (
        r"model_1\.pt: trained for task us_nav_state \(policy \(16,\), critic \(30,\), actions 5\), "
        r"this run is task us_nav \(policy \(10,\), image \(3, 16"
    )
    with pytest.raises(InputError, match=both):
        runner.load(str(checkpoint))
    # a checkpoint written before layouts were recorded: its tensors' shapes give the mismatch away
    old = checkpoints.load_checkpoint(checkpoint)
    del old["layout"]
    old_file = checkpoints.atomic_save(old, tmp_path / "model_1.pt")
    with pytest.raises(
        InputError,
        match=r"trained for another task or observation layout \(actor_state_dict.*\), this run is task us_nav \(",
    ):
        runner.load(str(old_file))
    assert all(torch.equal(before[k], v) for k, v in runner.alg.get_policy().state_dict().items())  # nothing was copied
    # play finds the recorded task before building anything: this folder has no config.yaml, so the run is task us_nav
    with pytest.raises(InputError, match="trained for task us_nav_state, this run is task us_nav"):
        play(compose_config([f"checkpoint={shutil.copy(checkpoint, tmp_path / 'model_7.pt')}"]))


def test_resume_refuses_another_task_and_training_settings(trained):
    with pytest.raises(InputError, match="the run is task us_nav_state, the command line asks for task us_nav"):
        train_with(f"resume={trained}", "task=us_nav")
    with pytest.raises(
        InputError, match=r"overrides \['num_envs=8', 'agent.max_iterations=9'\] would change the training"
    ):
        train_with(
            f"resume={trained}", "task=us_nav_state", "num_envs=8", "agent.max_iterations=9", "seed=0"
        )  # seed=0 is the run's own


def test_resume_removes_killed_writes_and_keeps_its_folder(tmp_path, trained, capsys):
    run_dir = copy_run(trained, tmp_path)
    leftover, unrelated = run_dir / ".model_2.pt.k1ll3d.tmp", run_dir / "notes.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a checkpoint")
    unrelated.write_text("mine")
    assert train_with(f"resume={run_dir}", "logger=wandb") == str(run_dir)
    out = capsys.readouterr().out
    assert f"removed {leftover.name}" in out and "ignoring ['logger=wandb']" in out
    assert not leftover.exists() and unrelated.exists() and checkpoints.latest_checkpoint(run_dir).name == "model_1.pt"
    # a resume that fails never removes the folder: it did not create it
    (run_dir / "model_4.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="model_4.pt"):
        train_with(f"resume={run_dir}")
    assert (run_dir / "model_1.pt").is_file()


@pytest.mark.parametrize(
    "bad, error",
    # Both pass the settings checks and fail once the run folder exists: a phantom spacing the patient
    # preparation refuses, a network class rsl-rl cannot find.
    [("patient.common.spacing_mm=9.0", InputError), ("agent.actor.class_name=NoSuchModel", Exception)],
    ids=["input_error", "exception"],
)
def test_training_failing_before_its_first_checkpoint_leaves_no_run_folder(tmp_path, bad, error):
    with pytest.raises(error):
        train_with(*TINY, "agent.max_iterations=1", f"log_root={tmp_path}", bad)
    assert (tmp_path / "us_nav_state").is_dir() and not list((tmp_path / "us_nav_state").iterdir())
    with pytest.raises(InputError, match="expected a run folder with checkpoints"):
        checkpoints.latest_run(tmp_path / "us_nav_state")


def test_unreadable_run_config_is_named(tmp_path, trained):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(checkpoints.latest_checkpoint(trained), run_dir)
    for text in ("task: [unclosed", "- a list, not a mapping"):
        (run_dir / "config.yaml").write_text(text)
        with pytest.raises(InputError, match=f"run config {run_dir / 'config.yaml'}: expected"):
            play(compose_config([f"checkpoint={run_dir}"]))
