"""Export and the deployment runtime: exported graphs match training, the runtime reproduces
play.py through the simulator and through the network bridge, and safety limits hold."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from policies import checkpoints
from policies.deploy.network import NetworkRobot, serve_robot
from policies.deploy.policy import ExportedPolicy
from policies.deploy.runtime import Runtime
from policies.deploy.sim_robot import SimRobot
from policies.runner import Runner
from policies.trajectory import load_trajectory
from policies.workflow import build_env, compose_config, run_config, train_config, trained_run
from sim.errors import InputError
from sim.robot.safety import SafetyLimits, SafetyMonitor
from tests.tasks_helpers import LIMITS, ROOT, SMALL_RUN

SCRIPTS = ROOT / "scripts"
QUICK = ["num_envs=16", "agent.num_steps_per_env=8", "agent.max_iterations=2", *SMALL_RUN]
IMAGE_QUICK = [
    "task.renderer.compile=false",
    "task.observation.image_size=32",
    "num_envs=8",
    "agent.num_steps_per_env=4",
    "agent.max_iterations=1",
    *SMALL_RUN,
]


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def last_line(out: subprocess.CompletedProcess) -> str:
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def state_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("state")
    run_dir = Path(last_line(script("train.py", "task=us_nav_state", *QUICK, f"log_root={root}")))
    exported = Path(
        last_line(script("export.py", "task=us_nav_state", "checkpoint=last", f"log_root={root}", *SMALL_RUN))
    )
    assert exported == run_dir / "exported"
    return run_dir


def training_actions(run_dir: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The training model's deterministic actions, loaded the way play.py loads it."""
    cfg = run_config(run_dir)
    env = build_env(cfg, "train", num_envs=2)
    runner = Runner(env, train_config(cfg), None, "cpu")
    runner.load(str(checkpoints.latest_checkpoint(run_dir)))
    policy = runner.get_inference_policy("cpu")
    n = len(next(iter(inputs.values())))
    batch = TensorDict({k: torch.from_numpy(v) for k, v in inputs.items()}, batch_size=[n])
    with torch.inference_mode():
        return policy(batch).numpy()


def check_export(run_dir: Path, inputs: tuple[str, ...]) -> None:
    folder = run_dir / "exported"
    assert {p.name for p in folder.iterdir()} >= {"policy.onnx", "policy.pt", "deploy.json", "samples.npz"}
    spec = json.loads((folder / "deploy.json").read_text())
    samples = np.load(folder / "samples.npz")
    assert [i["name"] for i in spec["observation"]["inputs"]] == list(inputs)
    policy_input = spec["observation"]["inputs"][0]
    assert (
        sum(s["size"] for s in policy_input["layout"]) == policy_input["shape"][1] == samples["input/policy"].shape[1]
    )
    assert spec["action"]["names"] == ["lateral", "elevation", "yaw", "tilt_x", "tilt_y"] and spec["action"][
        "clamp"
    ] == [-1.0, 1.0]
    assert (
        spec["control"]["rate_hz"] == 10.0 and spec["robot"]["name"] == "iiwa14" and len(spec["robot"]["joints"]) == 7
    )
    assert spec["robot"]["tool_frame"] == "probe_tip" and spec["safety"]["max_force_n"] == 25.0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert spec["versions"]["torch"] and sorted(manifest) == ["deploy.json", "policy.onnx", "policy.pt", "samples.npz"]
    inputs_ = {k[len("input/") :]: samples[k] for k in samples.files if k.startswith("input/")}
    assert np.abs(samples["actions"]).max() > 0
    reference = training_actions(run_dir, inputs_)
    np.testing.assert_allclose(samples["actions"], reference, atol=1e-6)
    for engine in ("onnx", "torchscript"):
        assert np.abs(ExportedPolicy(folder, engine)(inputs_) - reference).max() <= 1e-5, engine


def test_export_state_policy_matches_training(state_run):
    check_export(state_run, ("policy",))


def test_export_image_policy_matches_training(tmp_path):
    run_dir = Path(last_line(script("train.py", "task=us_nav", *IMAGE_QUICK, f"log_root={tmp_path}")))
    script("export.py", "task=us_nav", "checkpoint=last", f"log_root={tmp_path}", "export.samples=24", *SMALL_RUN)
    check_export(run_dir, ("policy", "image"))
    spec = json.loads((run_dir / "exported" / "deploy.json").read_text())
    assert spec["observation"]["inputs"][1]["shape"] == ["batch", 3, 32, 64]  # biplane: two 32 x 32 planes


def test_exported_files_are_checked_against_their_hashes(state_run, tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    for f in (state_run / "exported").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "policy.onnx").write_bytes((folder / "policy.onnx").read_bytes()[:-10])
    with pytest.raises(InputError, match="policy.onnx: missing or its sha256 differs"):
        ExportedPolicy(folder)
    with pytest.raises(InputError, match="deploy.json"):
        ExportedPolicy(tmp_path / "nowhere")


def sim_robot(run_dir: Path, seed: int) -> SimRobot:
    """The simulator as deploy.py builds it: a one-environment run of the run's task."""
    cfg = compose_config([f"seed={seed}", f"checkpoint={run_dir}", *SMALL_RUN])
    trained_run(cfg)
    torch.manual_seed(seed)
    return SimRobot(build_env(cfg, "train", num_envs=1))


def test_a_run_is_played_on_its_own_patients_unless_told_otherwise(state_run):
    cfg = compose_config([f"checkpoint={state_run}"])  # the default task (us_nav) brings the phantom family
    trained_run(cfg)
    assert cfg.patient.common.spacing_mm == 2.0 and [e.seed for e in cfg.patient.train] == [0, 1]  # the run's
    edit = "patient.test=[{seed: 7}]"
    cfg = compose_config([f"checkpoint={state_run}", edit])
    trained_run(cfg, [edit])
    assert [e.seed for e in cfg.patient.test] == [7] and cfg.patient.common.spacing_mm == 2.0
    cfg = compose_config([f"checkpoint={state_run}", "patient=totalseg_example"])
    trained_run(cfg, ["patient=totalseg_example"])
    assert cfg.patient.common.source == "nifti"


def test_runtime_on_the_simulator_reproduces_play(state_run):
    played = json.loads(
        last_line(script("play.py", f"checkpoint={state_run}", "num_envs=1", "seed=5", "trajectory=true", *SMALL_RUN))
    )
    reference = load_trajectory(played["trajectory"])
    deployed = json.loads(
        last_line(script("deploy.py", f"checkpoint={state_run}", "seed=5", "deploy.engine=torchscript", *SMALL_RUN))
    )
    assert deployed["episodes"][0]["status"] == "done"
    runtime = load_trajectory(deployed["episodes"][0]["trajectory"])
    assert len(runtime["actions"]) == len(reference["actions"]) >= 5
    for key in ("poses", "q", "actions", "input/policy"):
        np.testing.assert_array_equal(runtime[key], reference[key], err_msg=key)
    # ONNX Runtime's kernels round differently in the last bits; the path stays the same.
    onnx = Runtime(state_run / "exported", "onnx").run_episode(sim_robot(state_run, 5)).arrays()
    steps = min(len(onnx["poses"]), len(reference["poses"]))
    np.testing.assert_allclose(onnx["poses"][:steps], reference["poses"][:steps], atol=1e-4)


def test_network_bridge_on_loopback_matches_the_direct_run(state_run):
    runtime = Runtime(state_run / "exported", "torchscript")
    direct = runtime.run_episode(sim_robot(state_run, 7))
    robot = NetworkRobot("127.0.0.1", 0)
    served: dict = {}
    limits = SafetyLimits.from_dict(runtime.spec["safety"])  # the robot PC's own limits
    pc = threading.Thread(
        target=lambda: served.update(serve_robot(sim_robot(state_run, 7), "127.0.0.1", robot.port, limits, runtime.dt))
    )
    pc.start()
    try:
        bridged = runtime.run_episode(robot)
    finally:
        robot.close()
        pc.join(timeout=60)
    assert (
        served == {"targets": len(bridged), "status": "closed"}
        and len(bridged) == len(direct)
        and bridged.status == direct.status == "done"
    )
    a, b = direct.arrays(), bridged.arrays()
    for key in ("poses", "q", "actions", "input/policy"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_deploy_script_names_bad_settings(state_run):
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "deploy.py"), f"checkpoint={state_run}", "deploy.robot=ftp", *SMALL_RUN],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "deploy.robot: expected one of ['sim', 'network', 'ros2'], got 'ftp'" in out.stderr
    with pytest.raises(InputError, match="engine 'tflite'"):
        Runtime(state_run / "exported", "tflite")


def test_runtime_stops_the_robot_on_excess_force(state_run):
    runtime = Runtime(state_run / "exported", "torchscript")
    runtime.limits = replace(runtime.limits, max_force_n=0.5)  # the probe presses about 4 N
    robot = sim_robot(state_run, 3)
    log = runtime.run_episode(robot)
    assert log.status.startswith("stopped: contact force") and len(log) == 0 and robot.done


def pose(x, y, z, angle_z=0.0) -> np.ndarray:
    return np.array([x, y, z, np.cos(angle_z / 2), 0, 0, np.sin(angle_z / 2)], np.float32)


def test_safety_clamps_targets_to_box_and_speed():
    monitor = SafetyMonitor(LIMITS, anchor_m=np.array([1.0, 0.0, 0.0]), dt_s=0.1)
    here = pose(1.0, -0.1, 0.0)
    near = pose(1.005, -0.1, 0.0)
    assert monitor.clamp(near, here)[1] == []
    far, why = monitor.clamp(pose(1.05, -0.1, 0.0), here)  # 0.5 m/s asked, 0.1 m/s allowed
    assert why == ["speed"] and np.isclose(far[0], 1.01, atol=1e-6)
    outside, why = monitor.clamp(pose(1.3, -0.1, 0.0), pose(1.1, -0.1, 0.0))
    assert why == ["workspace"] and np.isclose(outside[0], 1.1)
    turned, why = monitor.clamp(pose(1.0, -0.1, 0.0, angle_z=0.5), here)  # 5 rad/s asked
    assert why == ["angular_speed"] and np.isclose(2 * np.arctan2(turned[6], turned[3]), 0.1, atol=1e-5)


def test_safety_stops_on_force_box_speed_and_nan():
    q = np.zeros(7)
    monitor = SafetyMonitor(LIMITS, anchor_m=np.zeros(3), dt_s=0.1)
    assert monitor.check(q, pose(0, -0.1, 0), 5.0) is None
    assert "contact force 25.0 N" in monitor.check(q, pose(0, -0.1, 0), 25.0)
    assert "outside the workspace" in monitor.check(q, pose(0.2, -0.1, 0), 5.0)
    assert "speed" in monitor.check(q, pose(0.05, -0.1, 0), 5.0)  # 5 cm in one 0.1 s period
    assert "not finite" in monitor.check(q, pose(np.nan, 0, 0), 5.0)
    with pytest.raises(InputError, match="keys \\['colour'\\] are unknown"):
        SafetyLimits.from_dict({**LIMITS.to_dict(), "colour": 1})


def test_ros2_message_conversions():
    from policies.deploy import ros2

    pixels = np.array([[0, 128], [255, 64]], np.uint8)
    image = SimpleNamespace(encoding="mono8", height=2, width=2, step=2, data=pixels.tobytes())
    np.testing.assert_allclose(ros2.image_to_array(image), pixels / 255.0, atol=1e-7)
    wide = np.array([[0, 65535, 7]], np.uint16)  # a padded row: step covers 3 pixels, width 2
    image16 = SimpleNamespace(encoding="mono16", height=1, width=2, step=6, data=wide.tobytes())
    np.testing.assert_allclose(ros2.image_to_array(image16), [[0.0, 1.0]])
    with pytest.raises(InputError, match="encoding 'yuv422'"):
        ros2.image_to_array(SimpleNamespace(encoding="yuv422"))
    joints = SimpleNamespace(name=["b", "a"], position=[2.0, 1.0])
    np.testing.assert_array_equal(ros2.joint_positions(joints, ["a", "b"]), [1.0, 2.0])
    with pytest.raises(InputError, match="joints \\['c'\\] missing"):
        ros2.joint_positions(joints, ["a", "c"])
    p = SimpleNamespace(position=SimpleNamespace(x=1, y=2, z=3), orientation=SimpleNamespace(w=1, x=0, y=0, z=0))
    np.testing.assert_array_equal(ros2.pose_to_array(p), [1, 2, 3, 1, 0, 0, 0])


def test_ros2_robot_without_rclpy_names_what_to_do(tmp_path):
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("rclpy is installed here")
    from policies.deploy.ros2 import Ros2Robot

    with pytest.raises(InputError, match="rclpy is not importable"):
        Ros2Robot(tmp_path / "session.npz", ["a"])
