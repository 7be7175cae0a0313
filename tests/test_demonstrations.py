"""Recorded demonstrations (scripts/record.py): what each row holds, against the environment's own
values; episodes kept as the config says; datasets that do not fit a training are refused."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from policies.demos.frames import STATE, ULTRASOUND
from policies.demos.lerobot import read_dataset
from policies.workflow import compose_config
from scripts.record import record_demos
from scripts.train import train
from sim.errors import InputError
from sim.ultrasound.probe import ProbeSpec
from tests.tasks_helpers import SMALL_RUN

# The diffusion policy reads one square plane per frame: us_nav without its biplane default.
ONE_PLANE = ["task=us_nav", "task.observation.planes=1"]

GOAL = "observation.images.goal"


def record(tmp_path, name: str, *overrides: str) -> tuple:
    cfg = compose_config([*SMALL_RUN, "num_envs=8", f"dataset={tmp_path / name}", *overrides])
    folder, summary = record_demos(cfg, overrides)
    return read_dataset(folder), summary, cfg


@pytest.fixture(scope="module")
def state_demos(tmp_path_factory):
    return record(tmp_path_factory.mktemp("demos"), "nav_state", "task=us_nav_state", "episodes=10")


def segment(dataset, name: str) -> int:
    """The column of observation.state named `name`."""
    return dataset.features[STATE]["names"].index(name)


def test_the_experts_successful_episodes_are_recorded_step_by_step(state_demos):
    dataset, summary, cfg = state_demos
    episodes, frames = dataset.episodes, dataset.frames
    assert (
        summary["kept"] == 10 and dataset.info["total_episodes"] == 10 and dataset.info["splits"] == {"train": "0:10"}
    )
    assert dataset.sonolab["task"] == "us_nav_state" and dataset.sonolab["policy"] == "expert"
    assert set(episodes["sonolab/patient"]) <= {"phantom_0", "phantom_1"} and (episodes["sonolab/success"] == 1).all()
    last = episodes["dataset_to_index"] - 1
    done, success = frames["next.done"].reshape(-1), frames["next.success"].reshape(-1)
    assert done[last].all() and done.sum() == 10 and success[last].all() and success.sum() == 10
    # the state a row holds was observed before its action: the next row's last_action is this row's action
    names = dataset.features[STATE]["names"]
    first = names.index("last_action[0]")
    for start, end in zip(episodes["dataset_from_index"], episodes["dataset_to_index"]):
        state, action = frames[STATE][start:end], frames["action"][start:end]
        np.testing.assert_allclose(state[1:, first : first + 5], action[:-1], atol=1e-6)
        np.testing.assert_array_equal(frames["frame_index"][start:end].reshape(-1), np.arange(end - start))
    # the Open-H force is the probe's contact force, which the state holds scaled by max_force_n
    force = frames[STATE][:, segment(dataset, "contact_force")] * cfg.task.reward.max_force_n
    np.testing.assert_allclose(frames["observation.meta.force_torque"][:, 2], force, rtol=1e-5, atol=1e-5)
    assert (frames["observation.meta.force_torque"][:, [0, 1, 3, 4, 5]] == 0).all()
    probe = ProbeSpec.from_dict(OmegaConf.to_container(cfg.probe))  # conf/probe/linear.yaml: a linear probe
    expected = [probe.frequency_mhz, probe.n_lines, probe.depth_m * 100, probe.width_m * 1000, 0.0, 0.0]
    np.testing.assert_allclose(frames["observation.meta.probe_acquisition_param"][0], expected, rtol=1e-6)
    assert set(frames["observation.meta.probe_type"]) == {"linear"}
    quaternions = frames["observation.meta.tool_pose.probe"][:, 3:]
    np.testing.assert_allclose(np.linalg.norm(quaternions, axis=1), 1.0, atol=1e-5)
    assert dataset.tasks and all(task.startswith("us_nav_state: ") for task in dataset.tasks)  # with the goal's name


def test_keep_all_puts_failed_episodes_in_their_own_split(tmp_path):
    # 4-step episodes: the expert reaches few goals in time
    dataset, summary, _ = record(
        tmp_path, "short", "task=us_nav_state", "episodes=8", "keep=all", "task.episode_steps=4"
    )
    episodes = dataset.episodes
    failed = episodes["split"] == "failure"
    assert summary["kept"] == 8 and failed.any()
    assert (episodes["sonolab/success"][failed] == 0).all() and (episodes["sonolab/success"][~failed] == 1).all()
    start = int(np.argmax(failed))
    assert not failed[:start].any() and failed[start:].all()  # the train split first, then the failures
    assert dataset.info["splits"]["failure"] == f"{start}:8"


def test_image_episodes_hold_the_newest_frame_and_the_goal_image(tmp_path):
    dataset, _, _ = record(tmp_path, "nav", *ONE_PLANE, "episodes=3", "task.renderer.compile=false")
    assert {ULTRASOUND, GOAL} <= set(dataset.features) and dataset.features[ULTRASOUND]["shape"] == [64, 64, 1]
    for start, end in zip(dataset.episodes["dataset_from_index"], dataset.episodes["dataset_to_index"]):
        goal, frames = dataset.frames[GOAL][start:end], dataset.frames[ULTRASOUND][start:end]
        assert (goal == goal[0]).all() and goal.dtype == np.uint8  # one goal image per episode
        assert not (frames == frames[0]).all() and frames.std() > 5  # the probe moves: the image changes
        assert not np.array_equal(frames[0], goal[0])


def test_training_refuses_a_missing_empty_or_foreign_dataset(state_demos, tmp_path):
    base = [*SMALL_RUN, "num_envs=2", "learner=diffusion", f"log_root={tmp_path / 'logs'}", "agent.max_iterations=1"]
    with pytest.raises(InputError, match="dataset: expected the folder of demonstrations"):
        train(compose_config(["task=us_nav_state", *base]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        train(compose_config(["task=us_nav_state", *base, f"dataset={tmp_path / 'empty'}"]))
    folder = state_demos[0].folder
    with pytest.raises(InputError, match=r"recorded for task 'us_nav_state'.*this run is task 'us_surgery_state'"):
        train(compose_config(["task=us_surgery_state", *base, f"dataset={folder}"]))
    with pytest.raises(InputError, match=r"recorded for task 'us_nav_state' \(task, layout differ"):
        train(compose_config([*ONE_PLANE, *base, f"dataset={folder}"]))
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("model_*.pt"))


def test_record_settings_are_checked_before_anything_runs(tmp_path):
    for override, message in (("episodes=0", "episodes: expected"), ("keep=some", "keep: expected success or all")):
        with pytest.raises(InputError, match=message):
            record(tmp_path, "bad", "task=us_nav_state", override)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(InputError, match="taken"):
        record(tmp_path, "taken", "task=us_nav_state", "episodes=1")
