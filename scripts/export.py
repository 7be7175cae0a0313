"""Export a trained policy for robots: policy.onnx, policy.pt, deploy.json, samples.npz.

    python scripts/export.py task=us_nav_state checkpoint=last
    python scripts/export.py task=us_nav checkpoint=logs/us_nav/<run>/model_499.pt export.max_force_n=15

Writes <run>/exported/ (atomically: only a folder whose graphs matched the training model is put
in place) and prints that folder as the last line. The task, agent and probe come from the run's
config.yaml; safety settings from `export.*` (conf/config.yaml), each within the hard bounds of
sim/robot/safety.py (a NaN, infinite or too large limit exits with an error, status 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from policies.export import EXPORT_DIR, export_policy
from policies.runner import Runner
from policies.workflow import build_env, train_config, trained_run
from sim.errors import InputError
from sim.robot.safety import ExportSettings
from tasks.us_nav.deploy import deployment_spec

SAMPLE_ENVS = 32  # environments stepped to record samples


def export(cfg: DictConfig) -> Path:
    """Export the run's checkpoint to <run>/exported; the `export.*` settings are checked against
    their hard bounds before anything else is done."""
    settings = ExportSettings.from_dict(OmegaConf.to_container(cfg.export, resolve=True), "export")
    run_dir, checkpoint = trained_run(cfg)
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg, "train", num_envs=SAMPLE_ENVS)
    runner = Runner(env, train_config(cfg), None, cfg.device)
    data = runner.load(str(checkpoint))
    spec = deployment_spec(env, settings)
    spec["source"] = {"run": str(run_dir), "checkpoint": checkpoint.name, "iteration": data["iter"], "probe": OmegaConf.to_container(cfg.probe, resolve=True)}
    git = run_dir / "git.txt"
    if git.is_file():
        spec["source"]["git"] = git.read_text().splitlines()[0]
    return export_policy(runner.alg.get_policy(), env, run_dir / EXPORT_DIR, spec, settings.samples)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(export(cfg))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
