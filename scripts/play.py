"""Run a trained policy: every environment plays one episode; print the metrics as JSON.

    python scripts/play.py task=us_nav_state checkpoint=last num_envs=256 split=test
    python scripts/play.py task=us_nav checkpoint=logs/us_nav/<run>/model_999.pt video=true
    python scripts/play.py task=us_nav_state patient=totalseg_example split=test   # the real CT

The task, agent and probe settings come from the run's config.yaml (what the policy was trained
with); patients, split, num_envs, seed and device from the command line. video=true writes
<run>/videos/play_<split>.mp4. The last line printed is one JSON object: success_rate,
pos_err_mm_mean, ang_err_deg_mean, episodes and more.
"""

from __future__ import annotations

import json
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from policies.evaluation import evaluate
from policies.runner import Runner
from policies.workflow import build_env, find_run, run_config, train_config
from sim.errors import InputError
from sim.ultrasound.probe import ProbeSpec


def play(cfg: DictConfig) -> dict:
    run_dir, checkpoint = find_run(cfg.checkpoint, cfg)
    saved = run_config(run_dir)
    if saved is not None:
        with open_dict(cfg):
            cfg.task, cfg.agent, cfg.probe = saved.task, saved.agent, saved.probe
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg, str(cfg.split))
    runner = Runner(env, train_config(cfg), None, cfg.device)
    runner.load(str(checkpoint))
    policy = runner.get_inference_policy(cfg.device)
    video = None
    if cfg.video:
        from sim.viz.play_video import PlayVideo

        video = PlayVideo(env, ProbeSpec.from_dict(OmegaConf.to_container(cfg.probe, resolve=True)))
    metrics = evaluate(env, policy, on_step=video, min_steps=int(cfg.video_steps) if video else 0)
    metrics.update(task=cfg.task.name, split=str(cfg.split), patients=[p.name for p in env.patients], checkpoint=str(checkpoint))
    if video is not None:
        metrics["video"] = str(video.write(run_dir / "videos" / f"play_{cfg.split}.mp4", fps=env.cfg.control_hz))
    return metrics


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(json.dumps(play(cfg)))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
