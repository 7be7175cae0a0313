"""The learner slot: `learner` picks a registered learner; train.py, play.py and export.py go
through its interface; a policy's action chunks (N, H, A) run one action per control step in
evaluation and on the deployment runtime's simulator path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import DictConfig, open_dict

from policies import learners
from policies.deploy.runtime import Runtime
from policies.deploy.sim_robot import SimRobot
from policies.evaluation import evaluate
from policies.learners.ppo import PpoLearner
from policies.settings import check_settings
from policies.workflow import build_env, compose_config, run_config, trained_run
from scripts.export import export
from scripts.play import play
from scripts.train import check_resume_overrides
from sim.errors import InputError
from tests.tasks_helpers import ROOT, SMALL_RUN

TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
EPISODE = 7  # steps: not a multiple of CHUNK, so an episode ends inside a chunk
TINY = [
    "task=us_nav_state",
    "num_envs=4",
    "agent.num_steps_per_env=4",
    "agent.algorithm.num_mini_batches=2",
    f"task.episode_steps={EPISODE}",
    *SMALL_RUN,
]
CHUNK = 3  # actions per chunk
DECAY = 0.5  # a chunk's step k is the policy's action times DECAY**k: each step of a chunk differs


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of a one-iteration learner=ppo training by scripts/train.py."""
    root = tmp_path_factory.mktemp("logs")
    out = run([*TRAIN, *TINY, "learner=ppo", "agent.max_iterations=1", f"log_root={root}"])
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    """The trained run exported by scripts/export.py's export (through the learner)."""
    return export(trained_cfg(trained))


def trained_cfg(run_dir: Path, *overrides: str) -> DictConfig:
    """The composed config of a play/export/deploy of run_dir's newest checkpoint (after trained_run)."""
    cfg = compose_config([f"checkpoint={run_dir}", "num_envs=4", *SMALL_RUN, *overrides])
    trained_run(cfg)
    return cfg


def chunks_of(actions: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(N, A) actions as a chunk (N, CHUNK, A) whose step k is actions * DECAY**k."""
    scale = DECAY ** np.arange(CHUNK, dtype=np.float32)[None, :, None]
    return actions[:, None] * (torch.from_numpy(scale) if isinstance(actions, torch.Tensor) else scale)


def same(a: dict, b: dict) -> bool:
    """Equal metrics (NaN equal to NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class ChunkedPpo(PpoLearner):
    """A learner extended by subclassing: PPO's policy, answered as action chunks; counts its queries."""

    name = "ppo_chunks"
    queries = 0

    def load_policy(self, cfg, env, checkpoint):
        policy = super().load_policy(cfg, env, checkpoint)

        def act(obs):
            ChunkedPpo.queries += 1
            return chunks_of(policy.act(obs))

        return learners.TrainedPolicy(act, policy.inputs, policy.iteration)


def test_the_default_learner_is_ppo_with_each_tasks_settings():
    for task, model in (("us_nav", "policies.models.correlation:CorrelationModel"), ("us_nav_state", "MLPModel")):
        cfg = compose_config([f"task={task}", "agent.algorithm.learning_rate=3e-4"])
        assert (
            cfg.learner == "ppo" and cfg.agent.actor.class_name == model and cfg.agent.algorithm.learning_rate == 3e-4
        )
    assert isinstance(learners.get("ppo"), PpoLearner) and "ppo" in learners.names()


REGISTERED = r"\['diffusion', 'distill', 'ppo', 'ppo_lag'\]"


def test_an_unknown_learner_is_refused_listing_the_registered_ones(tmp_path):
    with pytest.raises(InputError, match=rf"learner: expected one of {REGISTERED}, got 'sac'"):
        learners.get("sac")
    cfg = compose_config(["task=us_nav_state"])
    with open_dict(cfg):
        cfg.learner = "sac"  # e.g. a config that did not come from conf/ (no conf/learner/sac.yaml to refuse it)
    with pytest.raises(InputError, match=rf"^learner: expected one of {REGISTERED}, got 'sac'"):
        check_settings(cfg)
    with pytest.raises(
        InputError, match=r"Could not find 'learner/sac' Available options in 'learner': diffusion distill ppo ppo_lag"
    ):
        compose_config(["learner=sac"])
    out = run([*TRAIN, "learner=sac", f"log_root={tmp_path}"])
    assert out.returncode != 0 and "learner/sac" in out.stderr and "ppo" in out.stderr and not list(tmp_path.iterdir())
    with pytest.raises(InputError, match=r"learner ppo_x: expected 'module:Class'"):
        learners.register("ppo_x", "tests.test_learners.ChunkedPpo")


def test_train_play_and_export_go_through_the_learner(trained, exported):
    saved = run_config(trained)
    assert saved.learner == "ppo" and saved.task.episode_steps == EPISODE
    metrics = play(trained_cfg(trained, "split=test"))
    assert metrics["episodes"] == 4 and 0.0 <= metrics["success_rate"] <= 1.0
    spec = json.loads((exported / "deploy.json").read_text())
    assert (
        exported == trained / "exported"
        and spec["source"]["iteration"] == 0
        and spec["source"]["checkpoint"] == "model_0.pt"
    )
    cfg = trained_cfg(trained)
    env = build_env(cfg, "train")
    policy = learners.get(cfg.learner).load_policy(cfg, env, trained / "model_0.pt")
    assert policy.inputs == ["policy"] and policy.iteration == 0
    with torch.inference_mode():
        assert policy(env.reset()).shape == (4, 5)


def test_a_resume_refuses_another_learner_and_old_runs_were_ppo(trained, tmp_path):
    cfg = compose_config([f"resume={trained}", "task=us_nav_state"])
    with open_dict(cfg):
        cfg.learner = "ppo_lag"
    with pytest.raises(InputError, match=r"overrides \['learner=ppo_lag'\] would change the training"):
        check_resume_overrides(["learner=ppo_lag"], cfg, run_config(trained), trained)
    old = yaml.safe_load((trained / "config.yaml").read_text())
    del old["learner"]  # a run trained before the learner setting
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert run_config(tmp_path).learner == "ppo"


def test_action_chunks_run_one_action_per_step_in_evaluation(trained, monkeypatch):
    monkeypatch.setattr(learners, "LEARNERS", dict(learners.LEARNERS))  # this test's registration ends with it
    learners.register(ChunkedPpo.name, f"{__name__}:ChunkedPpo")
    cfg = trained_cfg(trained)
    env = build_env(cfg, "train")
    start = env.state_dict()
    chunked = learners.get(ChunkedPpo.name).load_policy(cfg, env, trained / "model_0.pt")
    ChunkedPpo.queries = 0
    got = evaluate(env, chunked)
    assert ChunkedPpo.queries == math.ceil(
        EPISODE / CHUNK
    )  # every environment's episode ends at its time limit, together

    # The same actions, stepped by hand: query every CHUNK steps, step k of a chunk is the action times DECAY**k.
    ppo = learners.get("ppo").load_policy(cfg, env, trained / "model_0.pt")
    steps, last = 0, None

    def by_hand(obs):
        nonlocal steps, last
        if steps % CHUNK == 0:
            last = ppo(obs)
        steps += 1
        return last * DECAY ** ((steps - 1) % CHUNK)

    env.load_state_dict(start)
    assert same(evaluate(env, by_hand), got)
    env.load_state_dict(start)
    assert not same(evaluate(env, ppo), got)  # the chunk's later steps made a difference

    with pytest.raises(
        InputError,
        match=r"policy output: expected actions \(N, A\) or an action chunk \(N, H, A\), H >= 1, got \(4, 0, 5\)",
    ):
        evaluate(env, lambda obs: torch.zeros(4, 0, 5))


def test_action_chunks_run_one_action_per_step_on_the_runtime_simulator(trained, exported):
    runtime = Runtime(exported, "onnx")
    exported, queries = runtime.policy, []

    def chunked(inputs: dict[str, np.ndarray]) -> np.ndarray:
        queries.append(inputs)
        return chunks_of(exported(inputs))

    chunked.reset = exported.reset  # the runtime resets its policy at each episode's start
    runtime.policy = chunked
    cfg = trained_cfg(trained, "seed=3")
    log = runtime.run_episode(SimRobot(build_env(cfg, "train", num_envs=1)))
    steps = len(log)
    assert steps > CHUNK and len(queries) == math.ceil(steps / CHUNK), (log.status, steps, len(queries))
    for t in range(steps):
        start = t - t % CHUNK  # the chunk's query step: its inputs are the ones logged then
        inputs = {name: np.asarray(values[start])[None] for name, values in log.inputs.items()}
        np.testing.assert_allclose(log.actions[t], exported(inputs)[0] * DECAY ** (t % CHUNK), rtol=0, atol=1e-6)
    assert not np.allclose(log.actions[1], log.actions[0])  # not the first action repeated


def test_play_takes_the_runs_task_settings_with_the_command_lines_task_settings_on_top(trained):
    overrides = ["task.success.hold_steps=7", "task=us_nav_state"]
    cfg = compose_config([f"checkpoint={trained}", "num_envs=4", *SMALL_RUN, "task.episode_steps=3"])
    saved_steps = run_config(trained).task.episode_steps
    trained_run(cfg, overrides)  # what play.py passes: the command line's overrides
    assert cfg.task.success.hold_steps == 7  # given on the command line
    assert cfg.task.episode_steps == saved_steps != 3  # composed, not given: the run's own
    bad = compose_config([f"checkpoint={trained}", *SMALL_RUN])
    trained_run(bad, ["task.no_such_setting=1"])
    with pytest.raises(InputError, match=r"task config keys \['no_such_setting'\] are unknown"):
        build_env(bad, "train")
