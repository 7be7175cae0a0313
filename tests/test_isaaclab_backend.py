"""The Isaac Lab backend, kit-less on the CPU (Newton physics): us_nav builds, resets and steps;
the physics arm reaches the probe poses sonolab's kinematics and renderer assume; the env's
state_dict (with the physics engine's joint state) resumes a rollout exactly; one PPO iteration
through scripts/train.py writes a checkpoint play.py loads. Runs where Isaac Lab is
installed (Python 3.12, `pip install -e ".[isaac]"`; CI stage .ci/isaac)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("isaaclab", reason="Isaac Lab is not installed (Python 3.12: pip install -e '.[isaac]')")

from sim.anatomy.patient_set import load_patients  # noqa: E402
from sim.backends.isaaclab.assets import tool_offset  # noqa: E402
from sim.backends.isaaclab.scene import LOCAL_FROM_PATIENT  # noqa: E402
from sim.backends.isaaclab.solver_state import WARMSTART  # noqa: E402
from sim.transforms import quat_to_matrix  # noqa: E402
from tasks import make_env  # noqa: E402
from tasks.us_nav.env import ARM, PROBE  # noqa: E402
from tasks.us_nav.mdp.terminations import pose_errors  # noqa: E402
from tests.tasks_helpers import ROOT, SMALL_RUN, small_patient_set  # noqa: E402

TASK = {"name": "us_nav", "renderer": {"compile": False}, "observation": {"image_size": 32}}


@pytest.fixture(scope="module")
def env():
    """One scene per process (Isaac Lab allows one simulation): 2 environments, 2 phantoms."""
    patients = load_patients(small_patient_set(), "train")
    env = make_env(TASK, patients, num_envs=2, seed=0, backend={"name": "isaaclab"})
    yield env
    env.scene.close()


def physics_probe_poses(env) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe-face positions (N, 3) and rotations (N, 3, 3), patient frame, from the physics
    engine's own state of the probe body (not sonolab's kinematics)."""
    scene, arm = env.scene, env.scene.arms[ARM]
    robot = scene.robots[ARM]
    body = robot.find_bodies("iiwa_probe")[0][0]
    local_position = (robot.data.body_pos_w.torch[:, body] - scene.scene.env_origins).double()
    local_rot = quat_to_matrix(robot.data.body_quat_w.torch[:, body][:, [3, 0, 1, 2]].double())  # Isaac Lab 3: xyzw
    offset, offset_quat = tool_offset(arm.urdf_path, "iiwa_probe", arm.tool_frame)
    tip = local_position + local_rot @ torch.as_tensor(offset)
    to_patient = torch.as_tensor(LOCAL_FROM_PATIENT).T
    point = (tip - torch.as_tensor(scene.anchor_local)) @ to_patient.T + scene.anchor[env.patient_idx].double()
    rot = to_patient @ local_rot @ quat_to_matrix(torch.as_tensor(offset_quat)[None])
    return point, rot


def test_reset_and_step_give_the_torch_backend_observations(env):
    obs = env.reset()
    assert set(obs.keys()) == {"policy", "image", "critic"}
    assert obs["image"].shape == (2, 3, 32, 64) and obs["policy"].shape == (2, 10)
    assert env.patient_idx.tolist() == [0, 1]  # each environment holds its own patient's body
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(torch.zeros(2, 5))
    assert all(torch.isfinite(v).all() for v in obs.values()) and torch.isfinite(reward).all()
    assert env.arm.within_limits(env.q, tol=1e-3).all()
    assert (env.force >= 0).all()


def test_physics_arm_reaches_the_poses_the_renderer_uses(env):
    env.reset()
    for _ in range(2):
        env.step(torch.zeros(2, 5))
    point, rot = physics_probe_poses(env)
    assert torch.allclose(point.float(), env.poses[:, :3], atol=2e-4)
    assert torch.allclose(rot.float(), quat_to_matrix(env.poses[:, 3:]), atol=2e-3)
    # For identical probe poses and imaging draws the images are the torch backend's: the same
    # renderer and bank.
    patients = load_patients(small_patient_set(), "train")
    torch_env = make_env(TASK, patients, num_envs=2, seed=0, backend="torch")
    images = torch_env.image(torch_env.reset_renderer, env.poses, env.patient_idx, env.render_params())
    assert torch.allclose(images, env.history[:, 0], atol=1e-5)


def test_arm_tracks_targets_and_the_sensor_feels_the_skin(env):
    env.reset()
    scene, patient = env.scene, env.patient_idx
    lifted = env.poses.clone()
    lifted[:, 1] -= 0.03  # 3 cm off the back (the back faces -y): free space
    q = {ARM: env.q}
    for _ in range(6):
        q = scene.follow(q, patient, {PROBE: lifted}, env.dt)
    poses = scene.tool_poses(q, patient)
    position, angle = pose_errors(poses[PROBE], lifted)
    assert (position < 0.002).all() and (angle < 0.01).all(), (position, angle)
    assert (scene.contacts(patient, poses)[PROBE].force_n == 0).all()
    pressed = lifted.clone()
    pressed[:, 1] += 0.035  # 5 mm into the skin
    for _ in range(3):
        q = scene.follow(q, patient, {PROBE: pressed}, env.dt)
    assert (scene.contacts(patient, scene.tool_poses(q, patient))[PROBE].force_n > 0).all()


def test_state_dict_resumes_the_physics_exactly(env):
    """Save mid-rollout, roll on, reload and roll the same actions again: the physics engine's
    joint state and drive targets are part of the state, so the second rollout is the first."""
    env.reset()
    gen = torch.Generator().manual_seed(3)
    actions = [2 * torch.rand(2, 5, generator=gen) - 1 for _ in range(10)]
    for a in actions[:3]:
        env.step(a)
    state = env.state_dict()
    parts = {f"{ARM}/joint_pos", f"{ARM}/joint_vel", f"{ARM}/joint_target", f"{PROBE}/force_n", WARMSTART}
    assert parts == set(state["scene"])
    assert state["scene"][f"{ARM}/joint_vel"].abs().max() > 0  # mid-motion: the velocities matter
    first = [env.step(a) for a in actions[3:]]
    for a in actions[:2]:  # move the arms elsewhere before reloading
        env.step(-a)
    env.load_state_dict(state)
    second = [env.step(a) for a in actions[3:]]
    for (obs_a, rew_a, *_), (obs_b, rew_b, *_) in zip(first, second):
        assert all(torch.equal(obs_a[key], obs_b[key]) for key in obs_a.keys()) and torch.equal(rew_a, rew_b)


def run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_train_one_iteration_then_play_and_export(tmp_path):
    common = ["backend=isaaclab", "task=us_nav_state", "num_envs=2", "task.episode_steps=8", *SMALL_RUN]
    trained = run(
        str(ROOT / "scripts" / "train.py"),
        *common,
        "agent.num_steps_per_env=4",
        "agent.max_iterations=1",
        "agent.save_interval=1",
        f"log_root={tmp_path}",
    )
    run_dir = Path(trained.stdout.strip().splitlines()[-1])
    assert list(run_dir.glob("model_*.pt"))
    played = run(str(ROOT / "scripts" / "play.py"), *common, "checkpoint=last", f"log_root={tmp_path}")
    metrics = json.loads(played.stdout.strip().splitlines()[-1])
    assert metrics["episodes"] == 2 and 0.0 <= metrics["success_rate"] <= 1.0
    exported = run(str(ROOT / "scripts" / "export.py"), *common, "checkpoint=last", f"log_root={tmp_path}")
    folder = Path(exported.stdout.strip().splitlines()[-1])
    assert folder == run_dir / "exported" and {"policy.onnx", "policy.pt", "deploy.json"} <= {
        f.name for f in folder.iterdir()
    }


def test_env_benchmark_with_the_isaaclab_backend():
    out = run(
        str(ROOT / "scripts" / "benchmark.py"),
        "env",
        "--task",
        "us_nav_state",
        "--backend",
        "isaaclab",
        "--num-envs",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--override",
        *SMALL_RUN,
        "--json",
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "isaaclab" and result["env_steps_per_s"] > 0
    assert np.isfinite(result["env_steps_per_s"])
