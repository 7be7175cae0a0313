"""scripts/benchmark.py runs end to end and prints the JSON fields BENCHMARKS.md relies on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tool", [[], ["--tool"]])
def test_render_benchmark_prints_one_json_object(tmp_path, tool):
    cmd = [
        sys.executable, str(ROOT / "scripts" / "benchmark.py"), "render", "--probe", "convex", "--batch", "3",
        "--height", "32", "--width", "32", "--repeats", "1", "--spacing-mm", "4", "--no-compile", "--json", *tool,
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "SONOLAB_CACHE": str(tmp_path)}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("images_per_s", "ms_per_batch", "peak_rss_mb", "device", "threads"):
        assert key in result
    assert result["batch"] == 3 and result["images_per_s"] > 0 and result["device"] == "cpu"
    assert result["tool"] == bool(tool)


def test_env_benchmark_with_the_expert_reports_the_skin_models_force(tmp_path):
    small = ["patient.common.spacing_mm=2.0", "patient.train=[{seed: 0},{seed: 1}]", "task.episode_steps=30"]
    cmd = [
        sys.executable, str(ROOT / "scripts" / "benchmark.py"), "env", "--task", "us_nav_state", "--num-envs", "8",
        "--steps", "60", "--warmup", "0", "--policy", "expert", "--override", *small, "--json",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "SONOLAB_CACHE": str(tmp_path)}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["policy"] == "expert" and result["env_steps_per_s"] > 0
    # The pressed probe: skin stiffness 2000 N/m x 2 mm press = 4 N (sim.robot.contact).
    assert abs(result["contact_force_n"]["median"] - 4.0) < 0.5
    assert result["success_rate"] > 0.5


def test_record_and_diffusion_benchmarks_report_their_figures(tmp_path):
    small = ["patient.common.spacing_mm=2.0", "patient.train=[{seed: 0},{seed: 1}]", "patient.test=[{seed: 100}]"]
    env = {**os.environ, "SONOLAB_CACHE": str(tmp_path / "cache")}
    bench = [sys.executable, str(ROOT / "scripts" / "benchmark.py")]
    record = [*bench, "record", "--task", "us_nav_state", "--num-envs", "4", "--episodes", "3", "--json"]
    out = subprocess.run([*record, "--override", *small], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 3 and result["episodes_per_min"] > 0 and 0 < result["mb_per_1000_steps"] < 10
    dataset = tmp_path / "demos"
    recorded = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "record.py"), "task=us_nav_state", "num_envs=4", "episodes=3",
         f"dataset={dataset}", *small],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert recorded.returncode == 0 and recorded.stdout.strip().splitlines()[-1] == str(dataset), recorded.stderr[
        -2000:
    ]
    diffusion = [*bench, "diffusion", "--task", "us_nav_state", "--dataset", str(dataset), "--epochs", "1"]
    overrides = [*small, "agent.down_dims=[16,32]", "agent.n_groups=4", "agent.batch_size=16"]
    out = subprocess.run(
        [*diffusion, "--repeats", "2", "--json", "--override", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["epoch_s"]) == 1 and result["chunk_latency_ms"]["onnx_runtime"] > 0 and result["batch_size"] == 16
