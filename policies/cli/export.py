"""Export a trained policy for robots: policy.onnx, policy.pt, deploy.json, samples.npz.

    sonolab-export task=us_nav_state checkpoint=last
    sonolab-export task=us_nav checkpoint=logs/us_nav/<run>/model_499.pt export.max_force_n=15

Writes <run>/exported/ (atomically: only a folder whose graphs matched the training model is put
in place) and prints that folder as the last line. The task, learner, agent and probe come from the run's
config.yaml; safety settings from `export.*` (conf/config.yaml), each within the hard bounds of
sim/robot/safety.py (a NaN, infinite or too large limit exits with an error, status 2).

The `sonolab-export` command (installed sonolab, any folder) and scripts/export.py run `main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from policies import learners
from policies.export import EXPORT_DIR
from policies.workflow import build_env, trained_run
from sim.errors import InputError
from sim.resources import conf_dir
from sim.robot.safety import ExportSettings
from tasks import registry
from tasks.schemas import register_schemas

SAMPLE_ENVS = 32  # environments stepped to record samples


def export(cfg: DictConfig) -> Path:
    """Export the run's checkpoint to <run>/exported; the `export.*` settings are checked against
    their hard bounds before anything else is done."""
    settings = ExportSettings.from_dict(OmegaConf.to_container(cfg.export, resolve=True), "export")
    run_dir, checkpoint = trained_run(cfg)  # the run's task: the command line's task= may be absent
    deployment_spec = registry.deployment_part(cfg.task.name, "deployment_spec")  # before any environment is built
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg, "train", num_envs=SAMPLE_ENVS)
    learner = learners.get(cfg.learner)
    policy = learner.load_policy(cfg, env, checkpoint)
    spec = deployment_spec(env, settings)
    probe = OmegaConf.to_container(cfg.probe, resolve=True)
    spec["source"] = {"run": str(run_dir), "checkpoint": checkpoint.name, "iteration": policy.iteration, "probe": probe}
    git = run_dir / "git.txt"
    if git.is_file():
        spec["source"]["git"] = git.read_text().splitlines()[0]
    return learner.export(policy, env, run_dir / EXPORT_DIR, spec, settings.samples)


register_schemas()  # conf/ starts from the config dataclasses (tasks/schemas.py)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(export(cfg))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
