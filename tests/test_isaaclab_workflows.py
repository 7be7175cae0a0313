"""Isaac Lab's own workflows on sonolab's tasks, kit-less on the CPU: the Gymnasium id builds an
Isaac Lab `DirectRLEnv` that steps the sonolab task, Isaac Lab's rsl-rl wrapper drives it, and
`isaaclab train` / `isaaclab play` find the ids through the package's `isaaclab.tasks` entry
point. Runs where Isaac Lab is installed (Python 3.12; CI stage .ci/isaac)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("isaaclab", reason="Isaac Lab is not installed (Python 3.12: pip install -e '.[isaac]')")

import gymnasium as gym  # noqa: E402
from isaaclab.envs import DirectRLEnv  # noqa: E402
from isaaclab.physics.physics_manager_cfg import PhysicsCfg  # noqa: E402
from isaaclab_rl.rsl_rl import RslRlVecEnvWrapper  # noqa: E402

import tasks  # noqa: E402, F401  (registers the ids)
from sim.errors import InputError  # noqa: E402
from tasks.isaaclab_agents import runner_cfg  # noqa: E402
from tasks.isaaclab_env import UsNavStateEnvCfg, sonolab_config  # noqa: E402
from tests.tasks_helpers import ROOT, SMALL_RUN  # noqa: E402

SMALL = [*SMALL_RUN, "task.episode_steps=6"]


def small_cfg(num_envs: int = 2) -> UsNavStateEnvCfg:
    cfg = UsNavStateEnvCfg()
    cfg.scene.num_envs = num_envs
    cfg.overrides = list(SMALL)
    return cfg


def test_direct_env_steps_the_sonolab_task_under_isaac_labs_rsl_rl_wrapper():
    env = gym.make("Sonolab-UsNavState-v0", cfg=small_cfg())
    try:
        direct = env.unwrapped
        assert isinstance(direct, DirectRLEnv)
        task = direct.task
        assert task.scene.sim is direct.sim and task.scene.scene is direct.scene  # one simulation
        assert direct.max_episode_length == 6 and direct.step_dt == pytest.approx(task.dt)
        spaces, obs = direct.single_observation_space, task.get_observations()
        assert set(spaces) == {"policy", "critic"} and direct.single_action_space.shape == (5,)
        assert all(spaces[name].shape == obs[name].shape[1:] for name in spaces)

        wrapped = RslRlVecEnvWrapper(env)  # resets, as Isaac Lab's runner expects
        obs = wrapped.get_observations()
        assert torch.equal(obs["policy"], task.get_observations()["policy"])
        wrapped.episode_length_buf = torch.tensor([0, 4])  # rsl-rl's random episode starts reach the task
        assert task.episode_length_buf.tolist() == [0, 4]
        dones = []
        for _ in range(2):
            obs, reward, done, extras = wrapped.step(torch.zeros(2, 5))
            dones.append(done.tolist())
            assert torch.isfinite(reward).all() and obs["critic"].shape == (2, *spaces["critic"].shape)
        # environment 1 started 4 steps in: its 6-step episode ends at the second step, a timeout
        assert dones == [[0, 0], [0, 1]] and extras["time_outs"].tolist() == [False, True]
        assert "Episode/position_error_mm" in extras["log"] and task.episode_length_buf.tolist() == [2, 0]
    finally:
        env.close()


def test_agent_config_is_sonolabs_agent_group():
    cfg = runner_cfg("us_nav")
    assert cfg.obs_groups == {"actor": ["policy", "image"], "critic": ["critic"]}
    correlation = "policies.models.correlation:CorrelationModel"  # a CNNModel subclass: a CNN model config
    assert cfg.actor.class_name == correlation and cfg.actor.correlation_cfg["max_shift_columns"] == 8
    assert type(cfg.actor).__name__ == "RslRlCNNModelCfg"
    assert (
        cfg.algorithm.entropy_coef == 0.005 and cfg.algorithm.use_clipped_value_loss
    )  # rsl-rl's default fills the gap
    with pytest.raises(InputError, match="env.overrides"):
        bad = small_cfg()
        bad.overrides = "[task.episode_steps=8]"  # what an unquoted Hydra list arrives as
        gym.make("Sonolab-UsNavState-v0", cfg=bad)
    unknown = small_cfg()
    unknown.sim.physics = PhysicsCfg()  # neither Newton nor PhysX
    with pytest.raises(InputError, match="sim.physics PhysicsCfg"):
        sonolab_config(unknown)


def isaaclab(*args: str) -> list[str]:
    overrides = ",".join(f'"{o}"' for o in SMALL)
    return [
        sys.executable,
        "-m",
        "isaaclab",
        *args,
        "--task",
        "Sonolab-UsNavState-v0",
        "--num_envs",
        "2",
        "--device",
        "cpu",
        "agent.device=cpu",
        f"env.overrides=[{overrides}]",
    ]


def test_isaaclab_train_then_play(tmp_path):
    train = subprocess.run(
        isaaclab("train", "--max_iterations", "1", "agent.num_steps_per_env=4"),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    checkpoints = list(tmp_path.glob("logs/rsl_rl/sonolab_us_nav_state/*/model_0.pt"))
    assert len(checkpoints) == 1
    # isaaclab play plays until Ctrl+C; it exports the policy first.
    play = subprocess.Popen(
        isaaclab("play", "--checkpoint", str(checkpoints[0])),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        # A shell's background jobs start with SIGINT ignored, and Python then installs no Ctrl+C handler:
        # restore the default so the SIGINT below stops playback wherever the tests run.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in play.stdout:
        lines.append(line)
        if "playback is running" in line:
            play.send_signal(signal.SIGINT)
    assert play.wait(timeout=120) == 0, "".join(lines)[-3000:]
    assert any("playback is running" in line for line in lines)
    assert (checkpoints[0].parent / "exported" / "policy.onnx").is_file()


def test_entry_point_names_the_tasks_package():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import importlib.metadata as m; "
                "print([e.value for e in m.entry_points(group='isaaclab.tasks') if e.name == 'sonolab'])"
            ),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.stdout.strip() == "['tasks']", out.stderr
