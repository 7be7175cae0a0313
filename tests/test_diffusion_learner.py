"""learner=diffusion end to end: demonstrations in, a closed-loop policy out; exact resume; the
exported encoder and denoiser run by the robot runtime's own DDIM loop match PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import checkpoints, learners
from policies.demos.frames import frame_layout
from policies.demos.lerobot import read_dataset
from policies.deploy.diffusion import DiffusionGraphPolicy, frames
from policies.deploy.policy import read_spec
from policies.deploy.runtime import Runtime
from policies.deploy.sim_robot import SimRobot
from policies.diffusion.policy import DiffusionController
from policies.workflow import build_env, compose_config, trained_run
from scripts.export import export
from scripts.play import play
from scripts.record import record_demos
from scripts.train import train
from sim.errors import InputError
from tests.tasks_helpers import SMALL_RUN

# The diffusion policy reads one square plane per frame: us_nav without its biplane default.
ONE_PLANE = ["task=us_nav", "task.observation.planes=1"]

SMALL_NET = ["agent.down_dims=[16,32]", "agent.feature_dim=16", "agent.n_groups=4", "agent.batch_size=64"]
EPOCHS = ["agent.max_iterations=2", "agent.save_interval=1", "agent.warmup_steps=2"]
# the run's episodes (play, export samples, the runtime): 20 steps, rendered without torch.compile
SHORT = ["task.episode_steps=20", "task.renderer.compile=false"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """8 expert episodes of us_nav (images), recorded by scripts/record.py."""
    folder = tmp_path_factory.mktemp("demos") / "nav"
    cfg = compose_config([*SMALL_RUN, *ONE_PLANE, "num_envs=8", "episodes=8", f"dataset={folder}", *SHORT[1:]])
    return record_demos(cfg)[0]


@pytest.fixture(scope="module")
def run_dir(demos, tmp_path_factory):
    """A 2-epoch learner=diffusion run on `demos`, a checkpoint per epoch."""
    root = tmp_path_factory.mktemp("logs")
    cfg = compose_config(
        [*SMALL_RUN, *ONE_PLANE, "learner=diffusion", f"dataset={demos}", f"log_root={root}", "num_envs=2"]
        + SHORT
        + SMALL_NET
        + EPOCHS
    )
    return Path(train(cfg))


def played(run_dir, *overrides):
    cfg = compose_config([f"checkpoint={run_dir}", "num_envs=4", *SMALL_RUN, *overrides])
    return cfg, play(cfg)


def test_training_writes_checkpoints_with_the_dataset_and_resumes_exactly(run_dir, demos):
    first = checkpoints.load_checkpoint(run_dir / "model_2.pt")
    assert first["iter"] == 2 and first["dataset"]["folder"] == str(demos) and first["layout"]["task"] == "us_nav"
    kept = run_dir / "kept_model_2.pt"
    shutil.move(run_dir / "model_2.pt", kept)  # as if killed after epoch 1
    cfg = compose_config([f"resume={run_dir}", f"log_root={run_dir.parent.parent}"])
    assert train(cfg, [f"resume={run_dir}"]) == str(run_dir)
    again = checkpoints.load_checkpoint(run_dir / "model_2.pt")
    for key in ("model_state_dict", "ema_state_dict"):
        for name, tensor in first[key].items():
            assert torch.equal(tensor, again[key][name]), (key, name)
    shutil.move(kept, run_dir / "model_2.pt")


def test_resume_refuses_other_demonstrations(run_dir, demos, tmp_path):
    cfg = compose_config([f"resume={run_dir}", f"log_root={run_dir.parent.parent}", f"dataset={tmp_path}"])
    with pytest.raises(InputError, match="dataset"):
        train(cfg, [f"resume={run_dir}", f"dataset={tmp_path}"])


def test_play_runs_the_policy_in_closed_loop(run_dir):
    _, metrics = played(run_dir)
    assert metrics["episodes"] == 4 and 0.0 <= metrics["success_rate"] <= 1.0 and metrics["pos_err_mm_mean"] > 0


def test_the_controller_keeps_each_environments_history_and_replans_new_episodes(run_dir):
    cfg = compose_config([f"checkpoint={run_dir}", "num_envs=3", *SMALL_RUN])
    _, checkpoint = trained_run(cfg, ["task.episode_steps=4"])
    env = build_env(cfg, "train")
    controller = learners.get("diffusion").load_policy(cfg, env, checkpoint).act
    assert isinstance(controller, DiffusionController)
    obs = env.reset()
    actions = controller(obs)
    state = controller.layout.observe(obs)[0]
    assert torch.equal(controller.state, state[:, None].expand(-1, 2, -1))  # the first frame fills the history
    for step in range(1, 5):  # step 4 ends every episode: that call sees new episodes
        obs = env.step(actions)[0]
        previous, actions = state, controller(obs)
        state = controller.layout.observe(obs)[0]
        if step == 4:
            assert torch.equal(controller.state, state[:, None].expand(-1, 2, -1)) and (controller.used == 1).all()
        else:
            assert torch.equal(controller.state[:, 0], previous) and torch.equal(controller.state[:, 1], state)


@pytest.fixture(scope="module")
def exported(run_dir):
    cfg = compose_config([f"checkpoint={run_dir}", *SMALL_RUN, "export.samples=16"])
    trained_run(cfg)
    return export(cfg)


def test_export_writes_both_graphs_and_the_schedule_checked_against_pytorch(exported):
    spec = read_spec(exported)
    part = spec["policy"]
    assert part["kind"] == "diffusion" and part["image_input"] == "image" and part["image_channels"] == [0, 2]
    assert len(part["schedule"]["timesteps"]) == 10 and spec["verification"]["tolerance"] == 1e-4
    samples = np.load(exported / "samples.npz")
    for engine in ("onnx", "torchscript"):
        runtime = DiffusionGraphPolicy(exported, engine, spec)
        planned = runtime.plan(samples["input/state_history"], samples["input/image_history"], samples["noise"])
        assert np.abs(planned - samples["actions"]).max() <= 1e-4, engine
    assert (samples["input/image_history"] * 255 % 1 == 0).all()  # 8-bit frames, as recorded


def test_the_runtime_builds_the_same_frames_as_the_controller(exported, run_dir):
    spec = read_spec(exported)
    cfg = compose_config([f"checkpoint={run_dir}", "num_envs=1", *SMALL_RUN])
    trained_run(cfg)  # the run's task settings
    env = build_env(cfg, "train")
    obs = env.reset()
    runtime = DiffusionGraphPolicy(exported, "onnx", spec)
    state, images = frames(obs["policy"].numpy(), obs["image"].numpy(), spec["policy"]["image_channels"])
    reference_state, reference_images = frame_layout(env, "policy", "image").observe(obs)
    np.testing.assert_array_equal(state, reference_state.numpy())
    np.testing.assert_allclose(images, reference_images.numpy() / 255.0, atol=1e-7)
    runtime.observe({"policy": obs["policy"].numpy(), "image": obs["image"].numpy()})
    assert runtime.state_history.shape == (1, 2, state.shape[1])


def test_the_runtime_drives_the_simulated_robot_one_action_per_step(exported, run_dir):
    runtime = Runtime(exported, "onnx")
    cfg = compose_config([f"checkpoint={run_dir}", "num_envs=1", *SMALL_RUN])
    trained_run(cfg)
    log = runtime.run_episode(SimRobot(build_env(cfg, "train", num_envs=1)))
    assert len(log) == 20 and log.status == "done"  # the run's 20-step episodes
    actions = np.stack(log.actions)
    assert np.isfinite(actions).all() and (np.abs(actions) <= 1).all()
    assert not np.allclose(actions[0], actions[8])  # a new chunk after action_steps steps


def test_an_export_that_does_not_match_pytorch_is_refused(run_dir, monkeypatch):
    import policies.diffusion.export as diffusion_export

    monkeypatch.setattr(diffusion_export, "DIFFUSION_TOLERANCE", -1.0)
    cfg = compose_config([f"checkpoint={run_dir}", *SMALL_RUN, "export.samples=4"])
    trained_run(cfg)
    folder = run_dir / "exported"
    before = json.loads((folder / "deploy.json").read_text()) if folder.exists() else None
    with pytest.raises(InputError, match="differs from the PyTorch sampler"):
        export(cfg)
    after = json.loads((folder / "deploy.json").read_text()) if folder.exists() else None
    assert before == after  # the previous export (if any) stays


def test_a_trained_policy_records_demonstrations_too(run_dir, tmp_path):
    overrides = [f"checkpoint={run_dir}", "episodes=2", "keep=all"]
    cfg = compose_config([*SMALL_RUN, "num_envs=2", f"dataset={tmp_path / 'replay'}", *overrides])
    folder, summary = record_demos(cfg, overrides)
    dataset = read_dataset(folder, features=[])
    assert summary["kept"] == 2 and dataset.sonolab["policy"] == str(run_dir / "model_2.pt")
    assert dataset.sonolab["task"] == "us_nav" and dataset.info["total_episodes"] == 2
