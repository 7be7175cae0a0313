"""Record demonstrations of a task as a LeRobotDataset v3.0 folder (policies/demos).

    sonolab-record task=us_nav_state episodes=500                  # the task's scripted expert
    sonolab-record task=us_nav episodes=200 keep=all               # failed episodes too, in split "failure"
    sonolab-record task=us_nav_state checkpoint=last episodes=100  # a trained policy (the run's settings)
    sonolab-record task=us_nav_state dataset=demos/nav_state       # where to write it

The task's scripted expert (`tasks.registry` TaskSpec.expert) drives num_envs environments unless
checkpoint= is given on the command line; `keep` (success | all) says which finished episodes are
kept, `episodes` how many; the folder (`dataset`, default <log_root>/<task>/demos/<timestamp>)
must not exist yet. It is written into a hidden sibling and renamed when complete, so a killed
recording leaves no partial dataset. Progress goes to stderr; the last line printed is the folder.

The `sonolab-record` command (installed sonolab, any folder) and scripts/record.py run `main`.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Sequence

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from policies import learners
from policies.demos.frames import frame_layout
from policies.demos.lerobot import DatasetWriter, check_new_folder
from policies.demos.record import KEEP, record, step_features
from policies.settings import require_choice, require_path
from policies.workflow import build_env, trained_run
from sim.errors import InputError, require_int
from sim.resources import conf_dir
from sim.ultrasound.probe import ProbeSpec
from tasks import registry
from tasks.schemas import register_schemas

# The groups a recorded frame is made of: the actor's vector group and its images (`frame_layout`).
STATE_GROUP, IMAGE_GROUP = "policy", "image"


def dataset_folder(cfg: DictConfig) -> Path:
    """`cfg.dataset`, or a new <log_root>/<task>/demos/<timestamp> path."""
    if cfg.dataset is not None:
        return require_path(cfg.dataset, "dataset")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(cfg.log_root) / cfg.task.name / "demos" / stamp


def record_demos(cfg: DictConfig, overrides: Sequence[str] = ()) -> tuple[Path, dict]:
    """Record cfg's demonstrations; returns (dataset folder, recording summary)."""
    episodes = require_int(cfg.episodes, "episodes", 1)
    keep = require_choice(cfg.keep, "keep", KEEP)
    from_checkpoint = any(o.split("=", 1)[0].lstrip("+") == "checkpoint" for o in overrides)
    source = "expert"
    if from_checkpoint:
        run_dir, checkpoint = trained_run(cfg, overrides)
        source = str(checkpoint)
    folder = dataset_folder(cfg)
    check_new_folder(folder)  # before any patient is prepared
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg, str(cfg.split))
    if from_checkpoint:
        policy = learners.get(cfg.learner).load_policy(cfg, env, checkpoint)
    else:
        policy = registry.spec(cfg.task.name).expert(env)
    image_group = IMAGE_GROUP if IMAGE_GROUP in env.observation_spaces else None
    layout = frame_layout(env, STATE_GROUP, image_group)
    probe = ProbeSpec.from_dict(OmegaConf.to_container(cfg.probe, resolve=True))
    snap = env.snapshot(torch.zeros(1, dtype=torch.long, device=env.device))
    sonolab = {
        "task": str(cfg.task.name),
        "task_config": OmegaConf.to_container(cfg.task, resolve=True),
        "layout": layout.describe(),
        "actions": int(env.num_actions),
        "policy": source,
        "keep": keep,
        "split": str(cfg.split),
        "patients": [p.name for p in env.patients],
        "seed": int(cfg.seed),
    }
    writer = DatasetWriter(folder, round(1.0 / env.dt), step_features(env, layout), snap.robot, sonolab)

    def progress(kept: int, run: int) -> None:
        print(f"\r[sonolab] record: {kept}/{episodes} kept of {run} episodes", end="", file=sys.stderr, flush=True)

    summary = record(env, policy, layout, writer, episodes, keep, probe, progress)
    print(file=sys.stderr)
    return writer.close(), summary


register_schemas()  # conf/ starts from the config dataclasses (tasks/schemas.py)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        folder, summary = record_demos(cfg, list(HydraConfig.get().overrides.task))
        print(json.dumps(summary))
        print(folder)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
