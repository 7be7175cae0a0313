"""learner=distill: the image student learns the scripted expert's actions on its
own states (rsl-rl's Distillation with the task expert as teacher); checkpoints resume exactly;
play and export use the student; bad settings are refused by name."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from policies import checkpoints, learners
from policies.learners.distill import DistillLearner
from policies.runner import Runner
from policies.workflow import build_env, compose_config, train_config
from scripts.export import export
from scripts.play import play
from scripts.train import train
from sim.errors import InputError
from tasks import registry
from tests.tasks_helpers import SMALL_RUN

# 4 environments of 6 steps, 16 x 16 images, an eager renderer; one gradient step per epoch
SMALL = [
    *SMALL_RUN,
    "task=us_nav",
    "learner=distill",
    "num_envs=4",
    "task.renderer.compile=false",
    "task.observation.image_size=16",
    "task.episode_steps=10",
    "agent.num_steps_per_env=6",
    "agent.algorithm.num_learning_epochs=2",
    "agent.student.correlation_cfg.pool=2",
    "agent.student.correlation_cfg.max_shift_columns=3",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 3-iteration us_nav training with learner=distill, a checkpoint per iteration."""
    root = tmp_path_factory.mktemp("logs")
    cfg = compose_config([*SMALL, f"log_root={root}", "agent.max_iterations=3", "agent.save_interval=1"])
    assert cfg.learner == "distill"
    return Path(train(cfg))


def test_us_nav_distils_the_expert_into_the_ppo_actor():
    distill, ppo = compose_config(["task=us_nav", "learner=distill"]), compose_config(["task=us_nav"])
    assert distill.learner == "distill" and isinstance(learners.get("distill"), DistillLearner)
    student, actor = OmegaConf.to_container(distill.agent.student), OmegaConf.to_container(ppo.agent.actor)
    assert student.pop("distribution_cfg")["init_std"] == 0.2 and actor.pop("distribution_cfg")["init_std"] == 1.0
    assert student == actor  # one image network for both learners: same inputs, same export
    assert list(distill.agent.obs_groups.student) == list(ppo.agent.obs_groups.actor) == ["policy", "image"]


def test_the_teacher_is_the_task_expert_on_privileged_inputs():
    cfg = compose_config(SMALL)
    env = build_env(cfg, "train")
    runner = Runner(env, train_config(cfg), None, cfg.device)
    obs = env.reset()
    expert = registry.spec("us_nav").expert(env)(obs)
    assert torch.equal(runner.alg.teacher(obs), expert) and expert.abs().max() > 0
    assert not list(runner.alg.teacher.parameters())  # nothing to train or load
    # the student reads images and proprioception only: the relative goal pose it is taught is not among them
    assert runner.alg.student.obs_groups == ["policy"] and runner.alg.student.obs_groups_2d == ["image"]
    obs_no_goal = obs.clone()
    obs_no_goal["critic"] = torch.zeros_like(obs["critic"])
    with torch.inference_mode():
        assert torch.equal(runner.alg.student(obs), runner.alg.student(obs_no_goal))


def test_distillation_fits_the_expert_and_resumes_exactly(run_dir):
    first = checkpoints.load_checkpoint(run_dir / "model_2.pt")
    assert first["iter"] == 2 and first["layout"]["task"] == "us_nav" and first["teacher_state_dict"] == {}
    kept = run_dir / "kept.pt"
    shutil.move(run_dir / "model_2.pt", kept)  # as if killed after iteration 1
    cfg = compose_config([f"resume={run_dir}", f"log_root={run_dir.parent.parent}"])
    assert train(cfg, [f"resume={run_dir}"]) == str(run_dir)
    again = checkpoints.load_checkpoint(run_dir / "model_2.pt")
    for name, tensor in first["student_state_dict"].items():
        assert torch.equal(tensor, again["student_state_dict"][name]), name
    shutil.move(kept, run_dir / "model_2.pt")


def test_play_and_export_use_the_student(run_dir):
    cfg = compose_config([f"checkpoint={run_dir}", "num_envs=4", *SMALL_RUN])
    metrics = play(cfg)
    assert metrics["episodes"] == 4 and metrics["pos_err_mm_mean"] > 0
    folder = export(compose_config([f"checkpoint={run_dir}", "num_envs=4", *SMALL_RUN]))
    assert (folder / "policy.onnx").is_file() and (folder / "deploy.json").is_file()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("algorithm.class_name", "PPO", "agent.algorithm.class_name"),
        ("algorithm.gradient_length", 0, "agent.algorithm.gradient_length"),
        ("algorithm.loss_type", "l1", "agent.algorithm.loss_type"),
        ("algorithm.expert_mixing.initial", 1.5, "agent.algorithm.expert_mixing.initial"),
        ("algorithm.expert_mixing.iterations", 0, "agent.algorithm.expert_mixing.iterations"),
        ("algorithm.expert_mixing", {"beta": 0.5}, "agent.algorithm.expert_mixing"),
        ("algorithm.learning_rate", -1.0, "agent.algorithm.learning_rate"),
        ("student.distribution_cfg.init_std", 0.0, "agent.student.distribution_cfg.init_std"),
        ("teacher", {"class_name": "MLPModel"}, "agent.teacher"),
        ("student", None, "agent.student"),
    ],
)
def test_bad_distill_settings_are_refused_by_name(key, value, expected):
    agent = OmegaConf.to_container(compose_config(["task=us_nav", "learner=distill"]).agent, resolve=True)
    bad = copy.deepcopy(agent)
    *parents, leaf = key.split(".")
    node = bad
    for part in parents:
        node = node[part]
    node[leaf] = value
    DistillLearner().check_agent(agent, 256)
    with pytest.raises(InputError, match=expected):
        DistillLearner().check_agent(bad, 256)
