"""Every registered task and variant keeps the environment contract (`tasks.registry`, `sim.envs.base`).

Each task is composed from conf/ as scripts/train.py composes it, on small 2 mm phantoms with few
environments, an eager renderer and small images where the task has them; then it resets, steps
with zero, random and NaN actions, its observations match its declared spaces and are finite,
its snapshot describes every environment, state_dict resumes it exactly, and its Gymnasium id
steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policies.workflow import build_env, compose_config
from sim.envs.base import BatchedEnv
from sim.errors import InputError
from tasks import registry
from tests.tasks_helpers import SMALL_RUN

NUM_ENVS = 3
# Settings that make a task small, applied where the task's config has them.
SMALL_TASK = {"task.renderer.compile": False, "task.observation.image_size": 16, "task.episode_steps": 8}


def small_overrides(name: str) -> list[str]:
    """Hydra overrides for a small run of task `name`: the small patients and SMALL_TASK's settings it has."""
    cfg = compose_config([f"task={name}"])
    task = [
        f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in SMALL_TASK.items()
        if OmegaConf.select(cfg, key) is not None
    ]
    return [*SMALL_RUN, *task]


def small_env(name: str, seed: int = 0) -> BatchedEnv:
    cfg = compose_config([f"task={name}", f"num_envs={NUM_ENVS}", f"seed={seed}", *small_overrides(name)])
    return build_env(cfg, "train")


def random_actions(env: BatchedEnv, gen: torch.Generator) -> torch.Tensor:
    return 2 * torch.rand(env.num_envs, env.num_actions, generator=gen) - 1


def check_observations(env: BatchedEnv, obs) -> None:
    """Every group is declared, has its declared shape, is finite and lies within its declared bounds."""
    assert set(obs.keys()) == set(env.observation_spaces), "observation groups differ from the declared spaces"
    for group, space in env.observation_spaces.items():
        value = obs[group]
        assert tuple(value.shape) == (env.num_envs, *space.shape), group
        assert torch.isfinite(value).all(), f"{group} has NaN or inf"
        low, high = (torch.as_tensor(b, dtype=value.dtype).expand_as(value[0]) for b in space.bounds())
        assert ((value >= low) & (value <= high)).all(), f"{group} leaves its declared bounds"


def check_step(env: BatchedEnv, out) -> None:
    obs, reward, terminated, truncated, extras = out
    check_observations(env, obs)
    n = env.num_envs
    assert reward.shape == (n,) and torch.isfinite(reward).all()
    assert terminated.shape == truncated.shape == (n,) and terminated.dtype == truncated.dtype == torch.bool
    assert all(torch.isfinite(v).all() for v in extras["log"].values())


def step_both(a: BatchedEnv, b: BatchedEnv, actions: torch.Tensor) -> None:
    """Step a and b with the same actions and require identical results."""
    obs_a, reward_a, term_a, trunc_a, _ = a.step(actions)
    obs_b, reward_b, term_b, trunc_b, _ = b.step(actions)
    assert all(torch.equal(obs_a[k], obs_b[k]) for k in obs_a.keys())
    assert torch.equal(reward_a, reward_b) and torch.equal(term_a, term_b) and torch.equal(trunc_a, trunc_b)


@pytest.mark.parametrize("name", registry.names())
def test_task_keeps_the_environment_contract(name):
    task = registry.spec(name)
    env = small_env(name)
    assert isinstance(env, task.env_class) and env.cfg.name == name
    assert tuple(env.action_space.shape) == (env.num_actions,)
    check_observations(env, env.reset())
    gen = torch.Generator().manual_seed(0)
    zero = torch.zeros(env.num_envs, env.num_actions)
    for actions in (zero, random_actions(env, gen), torch.full_like(zero, float("nan"))):
        check_step(env, env.step(actions))

    snap = env.snapshot()
    assert (
        torch.equal(snap.env_ids, torch.arange(env.num_envs))
        and snap.tool in snap.tool_forces
        and snap.robot in snap.base_poses
    )
    for tensor in (
        *snap.tool_poses.values(),
        *snap.base_poses.values(),
        *snap.joint_positions.values(),
        *snap.tool_forces.values(),
    ):
        assert len(tensor) == env.num_envs and torch.isfinite(tensor).all()
    assert snap.tool_poses[snap.tool].shape[1:] == (7,) and (
        snap.goal_pose is None or snap.goal_pose.shape == (env.num_envs, 7)
    )
    assert len(env.snapshot(torch.tensor([1])).patient) == 1

    # An external controller drives the tools: holding them where they are counts one step.
    steps = env.episode_length_buf.clone()
    over = env.drive_tools({snap.tool: snap.tool_poses[snap.tool]})
    assert over.shape == (env.num_envs,) and over.dtype == torch.bool and torch.equal(env.episode_length_buf, steps + 1)
    with pytest.raises(InputError, match="tool targets"):
        env.drive_tools({"no_such_tool": snap.tool_poses[snap.tool]})
    env.reset()

    # NaN actions are zero actions: the same step from the same state.
    state = env.state_dict()
    nan_out = env.step(torch.full_like(zero, float("nan")))
    env.load_state_dict(state)
    zero_out = env.step(zero)
    assert all(torch.equal(nan_out[0][k], zero_out[0][k]) for k in zero_out[0].keys()) and torch.equal(
        nan_out[1], zero_out[1]
    )

    # Exact resume: a fresh environment (another seed) loaded with the state steps identically.
    state = env.state_dict()
    fresh = small_env(name, seed=7)
    fresh.load_state_dict(state)
    for _ in range(10):  # crosses an 8-step episode end (and its resets)
        step_both(env, fresh, random_actions(env, gen))


def test_gymnasium_ids_of_every_task_step():
    for name in registry.names():
        envs = gym.make_vec(registry.spec(name).gym_id, num_envs=2, backend="torch", overrides=small_overrides(name))
        obs, _ = envs.reset(seed=1)
        assert envs.single_observation_space.contains({k: v[0] for k, v in obs.items()}), name
        obs, reward, terminated, truncated, _ = envs.step(np.zeros((2, *envs.single_action_space.shape), np.float32))
        assert reward.shape == (2,) and np.isfinite(reward).all() and all(np.isfinite(v).all() for v in obs.values()), (
            name
        )


def test_registry_finds_tasks_by_name_only():
    assert {"us_nav", "us_nav_state"} <= set(registry.names())
    with pytest.raises(InputError, match=r"task 'no_such_task': expected one of \['us_nav'"):
        registry.spec("no_such_task")
    with pytest.raises(InputError, match="learner 'nope' for task 'us_nav_state': expected one of"):
        registry.agent_config_path("us_nav_state", "nope")
    for name in registry.names():
        task = registry.spec(name)
        for learner in task.agents:
            assert registry.agent_config_path(name, learner).is_file(), (name, learner)
        assert gym.spec(task.gym_id).kwargs["task"] == name
        assert set(task.metrics) and all(isinstance(unit, str) for unit in task.metrics.values())
    # The variant supplies its settings under the caller's: us_nav_state from its name alone has no images.
    state = registry.task_config("us_nav_state", {"name": "us_nav_state", "episode_steps": 5})
    assert state["observation"] == {"images": False} and state["episode_steps"] == 5
    with pytest.raises(InputError, match="a name no other task registered"):
        registry.register(registry.TaskSpec(**{**registry.spec("us_nav").__dict__, "gym_id": "Sonolab-Other-v0"}))
