"""learner=diffusion: a diffusion policy cloned from recorded demonstrations (Chi et al. 2023).

    sonolab-record task=us_nav_state episodes=500 dataset=demos/nav_state
    sonolab-train task=us_nav_state learner=diffusion dataset=demos/nav_state
    sonolab-play task=us_nav_state checkpoint=last split=test

The agent group (conf/agent/<task>/diffusion.yaml) holds the network's settings
(`policies.diffusion.networks.net_config`: obs_horizon, horizon, action_steps, widths, noise
schedule) and the trainer's (`TRAINER_KEYS`): obs_groups {state: vector group, images: image group
or null}, max_iterations (epochs), batch_size, learning_rate, weight_decay, warmup_steps, ema_decay
and save_interval. The state and action sizes come from the task. Training reads the dataset
`dataset` (`policies.demos.lerobot`), refusing one recorded for another task or observation
layout, or, on resume, another dataset than the run started with; the policy is the EMA network
in closed loop (`policies.diffusion.policy.DiffusionController`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from omegaconf import DictConfig, OmegaConf

from policies import checkpoints
from policies.demos.frames import STATE, FrameLayout, frame_layout
from policies.demos.lerobot import Dataset, read_dataset
from policies.diffusion.data import ACTION, demonstrations
from policies.diffusion.networks import DiffusionPolicyNet, net_config
from policies.diffusion.policy import DiffusionController
from policies.diffusion.trainer import EMA, Trainer
from policies.learners.base import Learner, TrainedPolicy
from sim.envs.base import BatchedEnv
from sim.errors import InputError, require, require_int, require_number

TRAINER_KEYS = (
    "obs_groups",
    "max_iterations",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "ema_decay",
    "save_interval",
)
# The sizes the task decides, not the agent settings: filled in from the environment.
TASK_SIZES = ("state_dim", "action_dim", "image_channels", "image_size")
CHECK_SIZES = {"state_dim": 1, "action_dim": 1, "image_channels": 0, "image_size": 0}  # stand-ins for check_agent


def network_settings(agent: Mapping, layout: FrameLayout, actions: int) -> dict:
    """The network's config: the agent settings' network keys with the task's sizes."""
    settings = {k: v for k, v in agent.items() if k not in TRAINER_KEYS}
    sizes = {"state_dim": len(layout.state_names), "action_dim": actions}
    sizes.update(image_channels=len(layout.images), image_size=layout.image_size)
    return {**settings, **sizes}


def groups(agent: Mapping) -> tuple[str, str | None]:
    """(state group, image group or None) of agent.obs_groups."""
    obs = agent.get("obs_groups")
    require(
        isinstance(obs, Mapping) and set(obs) == {"state", "images"},
        "agent.obs_groups",
        "{state: <vector group>, images: <image group> or null}",
        obs,
    )
    return obs["state"], obs["images"]


def check_dataset(dataset: Dataset, env: BatchedEnv, layout: FrameLayout) -> None:
    """InputError unless `dataset` was recorded for env's task with `layout` and its action size."""
    recorded = dataset.sonolab or {}
    here = {"task": str(env.cfg.name), "layout": layout.describe(), "actions": int(env.num_actions)}
    theirs = {key: recorded.get(key) for key in here}
    if theirs != here:
        wrong = [key for key in here if theirs[key] != here[key]]
        raise InputError(
            f"dataset {dataset.folder}: recorded for task {theirs['task']!r} ({', '.join(wrong)} differ: "
            f"{ {k: theirs[k] for k in wrong} }), this run is task {here['task']!r} with "
            f"{ {k: here[k] for k in wrong} }: expected demonstrations of this task and observation layout"
        )


def fingerprint(dataset: Dataset) -> dict:
    """What identifies the demonstrations a run learns from (compared on resume)."""
    info = dataset.info
    return {"folder": str(dataset.folder), "total_frames": info["total_frames"], "episodes": info["total_episodes"]}


class DiffusionLearner(Learner):
    """A diffusion policy trained on demonstrations (module docstring)."""

    name = "diffusion"

    def check_agent(self, agent: Mapping | None, num_envs: int) -> None:
        require(
            isinstance(agent, Mapping),
            "agent",
            "the agent settings (conf/agent/<task>/diffusion.yaml)",
            type(agent).__name__,
        )
        missing = [key for key in TRAINER_KEYS if key not in agent]
        require(not missing, "agent", f"the trainer settings {list(TRAINER_KEYS)}", f"missing {missing}")
        given = [key for key in TASK_SIZES if key in agent]
        require(not given, f"agent.{given[0] if given else ''}", "no setting (the task decides it)", "a value")
        state, images = groups(agent)
        require(isinstance(state, str), "agent.obs_groups.state", "a group name", repr(state))
        require(images is None or isinstance(images, str), "agent.obs_groups.images", "a group name or null", images)
        require_int(agent["max_iterations"], "agent.max_iterations", 1)
        require_int(agent["batch_size"], "agent.batch_size", 1)
        require_number(agent["learning_rate"], "agent.learning_rate", 0.0, 1.0, low_open=True)
        require_number(agent["weight_decay"], "agent.weight_decay", 0.0, math.inf)
        require_int(agent["warmup_steps"], "agent.warmup_steps", 1)
        require_number(agent["ema_decay"], "agent.ema_decay", 0.0, 1.0)
        require_int(agent["save_interval"], "agent.save_interval", 1)
        sizes = dict(CHECK_SIZES, **({"image_channels": 1, "image_size": 64} if images else {}))
        net_config({**{k: v for k, v in agent.items() if k not in TRAINER_KEYS}, **sizes})

    def layout(self, cfg: DictConfig, env: BatchedEnv) -> FrameLayout:
        state, images = groups(cfg.agent)
        return frame_layout(env, state, images)

    def train(self, cfg: DictConfig, env: BatchedEnv, run_dir: Path, checkpoint: Path | None) -> None:
        if cfg.get("dataset") is None:
            raise InputError(
                "dataset: expected the folder of demonstrations to learn from (scripts/record.py writes one) "
                "for learner=diffusion, got null"
            )
        layout = self.layout(cfg, env)
        check_dataset(read_dataset(cfg.dataset, features=[]), env, layout)  # its description, before its frames
        dataset = read_dataset(cfg.dataset, features=[STATE, ACTION, *layout.image_names])
        agent = OmegaConf.to_container(cfg.agent, resolve=True)
        net = DiffusionPolicyNet(network_settings(agent, layout, env.num_actions))
        demos = demonstrations(dataset, layout, net.obs_horizon, net.horizon)
        state = demos.state
        net.normalizer.set_stats(
            state.mean(0).numpy(), state.std(0).numpy(), demos.actions.min(0).values.numpy(),
            demos.actions.max(0).values.numpy(),
        )  # fmt: skip
        extra = {
            "layout": checkpoints.layout(env),
            "seed": int(cfg.seed),
            "dataset": fingerprint(dataset),
            "agent": agent,
        }
        trainer = Trainer(net, demos, cfg.agent, cfg.device, extra)
        if checkpoint is not None:
            data = checkpoints.load_checkpoint(checkpoint, cfg.device)
            checkpoints.check_compatible(data, checkpoint, extra["layout"], {EMA: net.state_dict()})
            if data.get("dataset") != extra["dataset"]:
                raise InputError(
                    f"resume {checkpoint}: the run learnt from dataset {data.get('dataset')}, "
                    f"{cfg.dataset} is now {extra['dataset']}: expected the same demonstrations"
                )
            trainer.restore(data)
        trainer.train(run_dir, str(cfg.logger))

    def load_policy(self, cfg: DictConfig, env: BatchedEnv, checkpoint: Path) -> TrainedPolicy:
        layout = self.layout(cfg, env)
        data = checkpoints.load_checkpoint(checkpoint, cfg.device)
        agent = OmegaConf.to_container(cfg.agent, resolve=True)
        net = DiffusionPolicyNet(network_settings(agent, layout, env.num_actions)).to(cfg.device)
        checkpoints.check_compatible(data, checkpoint, checkpoints.layout(env), {EMA: net.state_dict()})
        net.load_state_dict(data[EMA])
        controller = DiffusionController(net, layout, env, int(cfg.seed))
        inputs = [layout.state_group, *([layout.image_group] if layout.image_group else [])]
        return TrainedPolicy(controller, inputs, int(data["iter"]))

    def export(self, policy: TrainedPolicy, env: BatchedEnv, folder: Path, spec: dict, samples: int) -> Path:
        from policies.diffusion.export import export_diffusion

        return export_diffusion(policy.act, env, folder, spec, samples)
