"""A supervised probe of transfer: how much of the expert's action a task's actor network can read
from its own inputs on patients it has never seen.

An RL run on us_nav takes 40 minutes to tell whether a network transfers to new anatomy; this
tells in a few. The task's scripted expert drives the environments (its actions plus Gaussian
exploration noise) on the train split and on the test split (held-out patients), and the learner's
actor network (agent.actor; agent.student for learner=distill), untrained, is fitted to the
expert's actions on the training steps by mean squared error. Each action dimension is scored
with R^2 = 1 - MSE / variance of the expert's actions, on the training steps and on the held-out
steps: a network that compares images keeps its held-out R^2 near its training R^2; one that
memorises the training patients reaches R^2 near 1 on them and near 0 (or below) on new ones.
"""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, OmegaConf
from rsl_rl.utils import resolve_callable
from tensordict import TensorDict

from policies.workflow import build_env
from tasks import registry


def network_settings(agent: DictConfig) -> tuple[dict, list[str]]:
    """(model config, observation groups) of the policy network in rsl-rl agent settings: the
    actor of an actor-critic config, the student of a distillation config."""
    key = "actor" if "actor" in agent else "student"
    return OmegaConf.to_container(agent[key], resolve=True), list(agent.obs_groups[key])


def expert_steps(
    cfg: DictConfig, split: str, steps: int, noise: float, groups: list[str]
) -> tuple[TensorDict, torch.Tensor]:
    """`steps` control steps of cfg.num_envs environments on `split` driven by the task's expert
    plus N(0, noise^2) on each action (clamped to [-1, 1]): the observations of `groups` at each
    step (steps x num_envs of them) and the expert's action there (steps x num_envs, A)."""
    env = build_env(cfg, split)
    expert = registry.spec(cfg.task.name).expert(env)
    generator = torch.Generator(device=env.device).manual_seed(int(cfg.seed))
    obs, seen, labels = env.reset(), [], []
    for _ in range(steps):
        action = expert(obs)
        seen.append(obs.select(*groups).clone())
        labels.append(action.clone())
        shake = noise * torch.randn(action.shape, generator=generator, device=env.device)
        obs = env.step((action + shake).clamp(-1.0, 1.0))[0]
    return torch.cat(seen), torch.cat(labels)


def r2(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R^2 per action dimension (A,) of predictions (M, A) of targets (M, A)."""
    return 1.0 - ((prediction - target) ** 2).mean(0) / target.var(0, unbiased=False).clamp_min(1e-8)


def transfer_probe(cfg: DictConfig, steps: int, updates: int, batch: int, lr: float, noise: float, every: int) -> dict:
    """Fit cfg's actor network to the expert's actions on the train split for `updates` Adam steps
    of `batch` samples at learning rate `lr`, scoring R^2 on both splits every `every` updates.

    Returns {"samples": {split: count}, "label_std": (A,) list, "curve": [{"update", "seconds",
    "r2_train": (A,), "r2_test": (A,)}, ...], "r2_train", "r2_test" (the last scores, A each),
    "r2_test_best" (A,: the best held-out score of each dimension over the curve),
    "fit_seconds"}.
    """
    model_cfg, groups = network_settings(cfg.agent)
    train_obs, train_y = expert_steps(cfg, "train", steps, noise, groups)
    test_obs, test_y = expert_steps(cfg, "test", steps, noise, groups)
    torch.manual_seed(int(cfg.seed))
    model_class = resolve_callable(model_cfg.pop("class_name"))
    model = model_class(train_obs[:1], {"probe": groups}, "probe", train_y.shape[1], **model_cfg)
    model.update_normalization(train_obs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def scores(obs: TensorDict, target: torch.Tensor) -> list[float]:
        with torch.no_grad():
            prediction = torch.cat([model(part) for part in obs.split(1024)])
        return [round(float(v), 4) for v in r2(prediction, target)]

    curve, start = [], time.perf_counter()
    for update in range(1, updates + 1):
        pick = torch.randint(train_y.shape[0], (batch,), device=train_y.device)
        loss = ((model(train_obs[pick]) - train_y[pick]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if update % every == 0 or update == updates:
            curve.append(
                {
                    "update": update,
                    "seconds": round(time.perf_counter() - start, 1),
                    "r2_train": scores(train_obs, train_y),
                    "r2_test": scores(test_obs, test_y),
                }
            )
    best = torch.tensor([point["r2_test"] for point in curve]).max(0).values
    return {
        "samples": {"train": int(train_y.shape[0]), "test": int(test_y.shape[0])},
        "label_std": [round(float(v), 4) for v in train_y.std(0)],
        "curve": curve,
        "r2_train": curve[-1]["r2_train"],
        "r2_test": curve[-1]["r2_test"],
        "r2_test_best": [round(float(v), 4) for v in best],
        "fit_seconds": curve[-1]["seconds"],
    }
