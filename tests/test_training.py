"""Training with rsl-rl PPO: learning improves, checkpoints are atomic, resume is exact, play reports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from policies import checkpoints
from policies.evaluation import evaluate
from policies.runner import Runner
from policies.workflow import build_env, compose_config, train_config
from sim.errors import InputError
from tests.tasks_helpers import ROOT, SMALL_RUN

TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
PLAY = [sys.executable, str(ROOT / "scripts" / "play.py")]
QUICK = ["task=us_nav_state", "num_envs=16", "agent.num_steps_per_env=8", "agent.save_interval=1", *SMALL_RUN]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def config(*overrides: str):
    return compose_config(overrides)


def test_short_state_training_improves_success():
    # Looser tolerances than the task's 5 mm / 5 deg give a clear signal within a short run.
    cfg = config(
        "task=us_nav_state",
        "num_envs=64",
        "seed=0",
        "task.success.position_m=0.01",
        "task.success.angle_rad=0.175",
        *SMALL_RUN,
    )
    torch.manual_seed(0)
    env = build_env(cfg, "train")
    runner = Runner(env, train_config(cfg), None, "cpu")
    policy = runner.get_inference_policy("cpu")
    before = evaluate(env, policy)["success_rate"]
    runner.alg.train_mode()
    runner.learn(40, init_at_random_ep_len=True)
    after = evaluate(env, runner.get_inference_policy("cpu"))
    assert after["success_rate"] >= before + 0.3, (before, after)


def final_state(run_dir: Path) -> dict:
    return checkpoints.load_checkpoint(checkpoints.latest_checkpoint(run_dir))


def test_resume_after_kill_continues_exactly(tmp_path):
    iterations = ["agent.max_iterations=6"]
    straight = run([*TRAIN, *QUICK, *iterations, f"log_root={tmp_path / 'a'}"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed_root = tmp_path / "b"
    proc = subprocess.Popen(
        [*TRAIN, *QUICK, *iterations, f"log_root={killed_root}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(killed_root.glob("us_nav_state/*/model_2.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(killed_root.glob("us_nav_state/*"))
    assert 2 <= int(checkpoints.latest_checkpoint(run_dir).stem.split("_")[1]) < 5, (
        "the kill came too late to test resuming"
    )
    resumed = run([*TRAIN, "task=us_nav_state", "resume=true", f"log_root={killed_root}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    a, b = final_state(next((tmp_path / "a").glob("us_nav_state/*"))), final_state(run_dir)
    assert a["iter"] == b["iter"] == 5
    for key in ("actor_state_dict", "critic_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert set(a["env_state"]) == set(b["env_state"])
    tensors = {k for k in a["env_state"] if k != "scene"}  # the torch backend's scene state is empty
    assert all(torch.equal(a["env_state"][k], b["env_state"][k]) for k in tensors)
    assert a["env_state"]["scene"] == b["env_state"]["scene"] == {}


def test_checkpoint_half_written_when_the_process_died_is_never_loaded(tmp_path):
    good = checkpoints.atomic_save({"format": checkpoints.FORMAT, "iter": 3}, tmp_path / "model_3.pt")
    dying = (
        "import os, sys, torch\n"
        "from policies import checkpoints\n"
        "def save(obj, f):\n"
        "    f.write(b'PK\\x03\\x04 half a checkpoint'); f.flush(); os._exit(9)\n"
        "torch.save = save\n"
        "checkpoints.atomic_save({'format': checkpoints.FORMAT, 'iter': 7}, sys.argv[1])\n"
    )
    died = run([sys.executable, "-c", dying, str(tmp_path / "model_7.pt")])
    assert died.returncode == 9
    assert not (tmp_path / "model_7.pt").exists() and list(tmp_path.glob(".model_7.pt.*.tmp"))
    assert checkpoints.latest_checkpoint(tmp_path) == good
    assert checkpoints.load_checkpoint(good)["iter"] == 3
    # A file truncated by other means is refused with a message naming it, never half-loaded.
    (tmp_path / "model_9.pt").write_bytes(good.read_bytes()[:50])
    with pytest.raises(InputError, match="model_9.pt"):
        checkpoints.load_checkpoint(checkpoints.latest_checkpoint(tmp_path))


def test_play_prints_metrics_and_writes_a_video(tmp_path):
    trained = run([*TRAIN, *QUICK, "agent.max_iterations=1", f"log_root={tmp_path}"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = Path(trained.stdout.strip().splitlines()[-1])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "git.txt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    played = run(
        [
            *PLAY,
            "task=us_nav_state",
            "checkpoint=last",
            "num_envs=4",
            "split=test",
            "video=true",
            "video_steps=12",
            f"log_root={tmp_path}",
            *SMALL_RUN,
        ]
    )
    if played.returncode < 0:  # the video renders with VTK, which a broken OpenGL kills with a signal
        pytest.skip(
            "play.py video=true died from signal "
            f"{signal.Signals(-played.returncode).name}: no working off-screen OpenGL here"
        )
    assert played.returncode == 0, played.stderr[-3000:]
    metrics = json.loads(played.stdout.strip().splitlines()[-1])
    assert {"success_rate", "pos_err_mm_mean", "ang_err_deg_mean", "episodes"} <= set(metrics)
    assert metrics["episodes"] == 4 and 0.0 <= metrics["success_rate"] <= 1.0 and metrics["pos_err_mm_mean"] > 0
    assert len(metrics["patients"]) == 1  # the one test phantom
    with imageio.get_reader(metrics["video"]) as video:  # 720p frames of every step until all episodes end
        count = video.count_frames()
        first, last = video.get_data(0), video.get_data(count - 1)
    assert count >= 12 and first.shape == (720, 1280, 3)  # sim.viz.play_scene.FRAME_SIZE
    assert np.abs(last.astype(int) - first.astype(int)).mean() > 1.0


def test_scripts_name_bad_config(tmp_path):
    bad_key = run([*TRAIN, *QUICK, "+task.colour=red", f"log_root={tmp_path}"])
    assert bad_key.returncode == 2 and "task config keys ['colour'] are unknown" in bad_key.stderr
    bad_task = run([*TRAIN, "task=us_fly", f"log_root={tmp_path}"])
    assert bad_task.returncode != 0 and "us_fly" in bad_task.stderr
    no_run = run([*PLAY, "task=us_nav_state", "checkpoint=last", f"log_root={tmp_path / 'empty'}"])
    assert no_run.returncode == 2 and "expected a run folder with checkpoints" in no_run.stderr
    viewer_and_video = run([*PLAY, "task=us_nav_state", "viewer=true", "video=true", f"log_root={tmp_path / 'empty'}"])
    assert viewer_and_video.returncode == 2 and "viewer=true: expected video=false" in viewer_and_video.stderr
    bad_device = run(
        [*TRAIN, *QUICK, "device=cuda:7" if torch.cuda.is_available() else "device=cuda", f"log_root={tmp_path}"]
    )
    assert bad_device.returncode == 2 and "device" in bad_device.stderr


def test_env_benchmark_prints_its_json_fields():
    out = run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchmark.py"),
            "env",
            "--task",
            "us_nav",
            "--num-envs",
            "4",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--override",
            *SMALL_RUN,
            "task.renderer.compile=false",
            "task.observation.image_size=32",
            "--json",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"env_steps_per_s", "peak_rss_mb", "device", "threads"} <= set(result)
    assert result["env_steps_per_s"] > 0 and result["observation_shapes"]["image"] == [3, 32, 64]
