"""Run a trained policy: every environment plays one episode; print the metrics as JSON.

    sonolab-play task=us_nav_state checkpoint=last num_envs=256 split=test
    sonolab-play task=us_nav checkpoint=logs/us_nav/<run>/model_999.pt video=true
    sonolab-play task=us_nav_state patient=totalseg_example split=test   # the real CT
    sonolab-play task=us_nav_state checkpoint=last viewer=true           # interactive

The task, learner, agent and probe settings come from the run's config.yaml (what the policy was trained
with), single task settings given on the command line on top (task.shield.enabled=true evaluates
us_surgery with its shield on); split, num_envs, seed and device from the command line, and the
patients: the run's own set unless patient=<set> names another (patient.<key>=... edits either). video=true writes
<run>/videos/play_<split>.mp4 (the 3-D scene of environment 0 beside its ultrasound image,
rendered off screen). The last line printed is one JSON object: success_rate,
pos_err_mm_mean, ang_err_deg_mean, episodes and more; for a policy trained under cost limits
(learner=ppo_lag) also ep_cost_mean, cost_rate and constraint_satisfied (`policies.evaluation`).
viewer=true instead opens an interactive 3-D window (needs a display; keys in sim/viz/viewer.py)
and prints viewer_steps when closed.
trajectory=true writes environment 0's first episode (policy inputs, actions, the robot's tool poses
and joint angles per step) to <run>/trajectories/play_<split>.npz; sonolab-deploy on the simulator
reproduces it where the task's tool targets move its tool as its actions do (us_nav; us_surgery
until the bit is in bone, `tasks.us_surgery.deploy.SimDrillRobot`).

The `sonolab-play` command (installed sonolab, any folder) and scripts/play.py run `main`.
"""

from __future__ import annotations

import json
import sys

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from policies import learners
from policies.evaluation import evaluate
from policies.trajectory import Env0Recorder
from policies.workflow import build_env, trained_run
from sim.errors import InputError
from sim.resources import conf_dir
from sim.ultrasound.probe import ProbeSpec
from tasks.schemas import register_schemas


def play(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    if cfg.viewer and (cfg.video or cfg.trajectory):
        raise InputError("viewer=true: expected video=false and trajectory=false (the viewer runs no evaluation)")
    run_dir, checkpoint = trained_run(cfg, overrides)
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg, str(cfg.split))
    trained = learners.get(cfg.learner).load_policy(cfg, env, checkpoint)
    policy = learners.ActionChunks(trained)  # one action per control step, also from a policy that returns chunks
    probe = ProbeSpec.from_dict(OmegaConf.to_container(cfg.probe, resolve=True))  # full size, for the viewer and videos
    if cfg.viewer:
        from sim.viz.viewer import PlayViewer  # VTK loads only for the viewer and videos

        steps = PlayViewer(env, policy, probe).show()
        return {"viewer_steps": steps, "task": cfg.task.name, "split": str(cfg.split), "checkpoint": str(checkpoint)}
    video = None
    if cfg.video:
        from sim.viz.play_video import PlayVideo

        video = PlayVideo(env, probe, run_dir / "videos" / f"play_{cfg.split}.mp4", fps=env.cfg.control_hz)
    recorder = Env0Recorder(env, policy, trained.inputs) if cfg.trajectory else None
    hooks = [hook for hook in (video, recorder and recorder.on_step) if hook is not None]
    metrics = evaluate(
        env,
        recorder or policy,
        on_step=lambda e: [hook(e) for hook in hooks],
        min_steps=int(cfg.video_steps) if video else 0,
        cost_limits=trained.cost_limits,
    )
    metrics.update(
        task=cfg.task.name, split=str(cfg.split), patients=[p.name for p in env.patients], checkpoint=str(checkpoint)
    )
    if video is not None:
        metrics["video"] = str(video.close())
    if recorder is not None:
        metrics["trajectory"] = str(recorder.trajectory.save(run_dir / "trajectories" / f"play_{cfg.split}.npz"))
    return metrics


register_schemas()  # conf/ starts from the config dataclasses (tasks/schemas.py)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(json.dumps(play(cfg, list(HydraConfig.get().overrides.task))))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
