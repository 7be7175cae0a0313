"""The environment contract: rewards as weighted terms, per-step costs, declared spaces."""

from __future__ import annotations

from dataclasses import asdict, fields

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.anatomy.patient_set import load_patients
from sim.envs.adapters.gymnasium import GymVectorEnv
from sim.envs.adapters.rsl_rl import RslRlVecEnv
from sim.envs.spaces import Segment, Space
from sim.envs.terms import RewardTerm, total, weighted
from sim.errors import InputError
from tasks import make_env
from tasks.us_nav.config import RewardCfg
from tasks.us_nav.deploy import deploy_contract, observation_layout
from tasks.us_nav.mdp import rewards
from tests.tasks_helpers import small_patient_set

STATE = {"name": "us_nav_state", "observation": {"images": False}}
IMAGES = {"name": "us_nav", "observation": {"images": True, "image_size": 16, "history": 2}}


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


def todays_reward(env, before: dict, action: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
    """The reward as it was written by hand before rewards were data (weights of `RewardCfg`)."""
    w = env.cfg.reward
    return (
        w.progress_position * rewards.progress(before["pos_err"], env.pos_err)
        + w.progress_angle * rewards.progress(before["ang_err"], env.ang_err)
        + w.success * terminated.float()
        - w.force * rewards.excess_force(env.force, w.max_force_n)
        - w.action_rate * rewards.action_change(action, before["last_action"])
        - w.action_excess * env.last_action_excess
    )


def test_reward_is_the_weighted_sum_of_its_terms_bit_for_bit(patients):
    env = make_env({**STATE, "episode_steps": 50, "reward": {"max_force_n": 3.0}}, patients, 6, seed=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        before = {k: getattr(env, k).clone() for k in ("pos_err", "ang_err", "last_action")}
        raw = 3 * torch.rand(6, 5, generator=g) - 1.5  # some beyond [-1, 1]: the excess term counts
        _, reward, terminated, truncated, extras = env.step(raw)
        assert not (terminated | truncated).any()  # nothing reset: the state after the step is the step's
        assert torch.equal(reward, todays_reward(env, before, raw.clamp(-1, 1), terminated))
        assert list(extras["reward_terms"]) == [t.name for t in env.reward_terms]
        assert torch.equal(total(extras["reward_terms"]), reward)


def test_reward_config_has_one_weight_per_term_and_refuses_bad_weights(patients):
    assert {f.name for f in fields(RewardCfg)} == {*rewards.TERMS, "max_force_n"}
    for bad in (-0.1, float("nan"), True, "1"):
        with pytest.raises(InputError, match="task.reward.force: expected a finite number in \\[0, inf\\)"):
            make_env({**STATE, "reward": {"force": bad}}, patients, 2)
    with pytest.raises(InputError, match="task.reward.max_force_n"):
        make_env({**STATE, "reward": {"max_force_n": 0.0}}, patients, 2)
    with pytest.raises(InputError, match="task config.reward keys \\['force_per_n'\\] are unknown"):
        make_env({**STATE, "reward": {"force_per_n": 0.1}}, patients, 2)


def test_contact_force_cost_counts_newtons_above_the_limit(patients):
    env = make_env({**STATE, "reward": {"max_force_n": 1.0}}, patients, 4, seed=0)  # the probe presses about 4 N
    assert env.cost_units == {"contact_force": "N"}
    _, reward, _, _, extras = env.step(torch.zeros(4, 5))
    cost = extras["costs"]["contact_force"]
    assert cost.shape == (4,) and cost.dtype == torch.float32
    assert torch.equal(cost, (env.force - 1.0).clamp_min(0.0)) and (cost > 1.0).all()
    assert torch.equal(extras["reward_terms"]["force"], 0.1 * -cost)
    relaxed = make_env({**STATE, "reward": {"max_force_n": 40.0}}, patients, 4, seed=0)
    assert torch.equal(relaxed.step(torch.zeros(4, 5))[4]["costs"]["contact_force"], torch.zeros(4))


def test_episode_logs_sum_terms_and_costs_to_the_episode_return(patients):
    n, steps = 4, 6
    env = make_env({**STATE, "episode_steps": steps, "reward": {"max_force_n": 2.0}}, patients, n, seed=1)
    g = torch.Generator().manual_seed(1)
    returns, cost_sums = torch.zeros(n), torch.zeros(n)
    for t in range(steps):
        _, reward, terminated, truncated, extras = env.step(2 * torch.rand(n, 5, generator=g) - 1)
        returns += reward
        cost_sums += extras["costs"]["contact_force"]
    done = terminated | truncated
    assert done.all(), "every episode ends at the time limit (no success in 6 steps from the start box)"
    log = extras["log"]
    terms = [f"Reward/{t.name}" for t in env.reward_terms]
    metrics = [
        f"Episode/{k}"
        for k in ("success", "position_error_mm", "angle_error_deg", "steps", "force_n", "peak_force_n")
        + ("start_position_error_mm", "start_head_foot_mm")
    ]
    assert set(log) == {*metrics, *terms, "Cost/contact_force"}
    assert all(log[k].shape == (n,) for k in terms)
    torch.testing.assert_close(sum(log[k] for k in terms), returns, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["Cost/contact_force"], cost_sums)
    assert (cost_sums > 0).all()
    # Every episode's force exceeded its 2 N limit (it cost), so its peak did; the peak bounds the last force.
    assert (log["Episode/peak_force_n"] > 2.0).all() and (log["Episode/peak_force_n"] >= log["Episode/force_n"]).all()
    assert torch.equal(env.episode_sums, torch.zeros(n, len(terms) + 1))  # the new episodes start from 0


def test_episode_sums_resume_exactly(patients):
    env = make_env({**STATE, "episode_steps": 5}, patients, 3, seed=2)
    actions = [torch.full((3, 5), 0.3 * k - 0.5) for k in range(8)]
    for a in actions[:3]:
        env.step(a)
    state = env.state_dict()
    twin = make_env({**STATE, "episode_steps": 5}, patients, 3, seed=9)
    twin.load_state_dict(state)
    ended = 0
    for a in actions[3:]:
        logs = env.step(a)[4]["log"], twin.step(a)[4]["log"]
        assert logs[0].keys() == logs[1].keys() and all(torch.equal(logs[0][k], logs[1][k]) for k in logs[0])
        ended += len(logs[0].get("Reward/success", ()))
    assert ended == 3  # every episode ended on the way, its sums spanning the saved state
    bad = {**state, "episode_sums": torch.zeros(3, 2)}
    with pytest.raises(InputError, match="environment state 'episode_sums': expected shape \\(3, 7\\), got \\(3, 2\\)"):
        twin.load_state_dict(bad)


@pytest.mark.parametrize("task", [STATE, IMAGES], ids=["us_nav_state", "us_nav"])
def test_declared_spaces_match_the_observations_and_hold_them(patients, task):
    env = make_env({**task, "renderer": {"compile": False}}, patients, 3, seed=0)
    spaces = env.observation_spaces
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        obs = env.get_observations() if step == 0 else env.step(2 * torch.rand(3, 5, generator=g) - 1)[0]
        assert list(obs.keys()) == list(spaces)
        for group, space in spaces.items():
            assert tuple(obs[group].shape[1:]) == space.shape and len(space.names) == space.shape[0], group
            low, high = space.bounds()
            value = obs[group].numpy()
            assert (value >= low - 1e-6).all() and (value <= high + 1e-6).all(), (group, space.names)
    action = deploy_contract(asdict(env.cfg))["action"]  # deploy.json's action and input layout
    assert env.action_space.shape == (env.num_actions,) and list(env.action_space.names) == action["names"]
    declared = [(s.unit, s.scale, s.low, s.high) for s in env.action_space.segments]
    assert declared == [(u, k, *action["clamp"]) for u, k in zip(action["units"], action["scale"])]
    layout = observation_layout(env.cfg)
    assert [(s.name, s.size) for s in spaces["policy"].segments] == [(e["name"], e["size"]) for e in layout]


def test_adapters_use_the_declared_spaces(patients):
    env = make_env(STATE, patients, 2, seed=0)
    gym_env = GymVectorEnv(env)
    policy = gym_env.single_observation_space["policy"]
    low, high = env.observation_spaces["policy"].bounds()
    assert np.array_equal(policy.low, low) and np.array_equal(policy.high, high) and policy.dtype == np.float32
    assert (
        np.isinf(policy.low[:3]).all()
        and policy.low[env.observation_spaces["policy"].names.index("contact_force")] == 0.0
    )
    assert gym_env.single_action_space == gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
    obs, _ = gym_env.reset(seed=0)
    assert gym_env.observation_space.contains(obs)
    obs, _, _, _, infos = gym_env.step(np.zeros((2, 5), np.float32))
    assert set(infos["costs"]) == {"contact_force"} and infos["costs"]["contact_force"].shape == (2,)
    vec = RslRlVecEnv(env)
    assert vec.num_actions == 5 and vec.observation_spaces is env.observation_spaces


def test_gym_infos_keep_episode_metrics_and_term_sums_apart(patients):
    gym_env = GymVectorEnv(make_env({**STATE, "episode_steps": 2}, patients, 2, seed=0))
    gym_env.reset(seed=0)
    gym_env.step(np.zeros((2, 5)))
    infos = gym_env.step(np.zeros((2, 5)))[4]
    assert set(infos["success"]) <= {0.0, 1.0}  # the metric, not the success term's weighted sum
    assert (
        "Reward/success" in infos
        and "Cost/contact_force" in infos
        and np.isfinite(infos["Reward/progress_position"]).all()
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.floats(-5, 0), st.floats(0, 5)), min_size=1, max_size=4),
    st.lists(st.integers(1, 3), max_size=2),
)
def test_space_bounds_broadcast_each_segment_over_its_elements(segments, tail):
    space = Space(
        (sum(s for s, _, _ in segments), *tail),
        tuple(Segment(f"s{i}", s, lo, hi) for i, (s, lo, hi) in enumerate(segments)),
    )
    low, high = space.bounds()
    assert low.shape == high.shape == space.shape and low.dtype == np.float32
    expected = np.repeat([lo for _, lo, _ in segments], [s for s, _, _ in segments]).astype(np.float32)
    assert np.array_equal(low.reshape(space.shape[0], -1), np.repeat(expected[:, None], low[0].size, 1))
    assert len(space.names) == space.shape[0] and len(set(space.names)) == space.shape[0]


def test_space_and_term_misuse_is_refused():
    with pytest.raises(
        InputError, match="space segments: expected sizes adding up to shape\\[0\\] of \\(4,\\), got \\[3\\]"
    ):
        Space((4,), (Segment("a", 3),))
    with pytest.raises(InputError, match="reward term 'a' weight"):
        RewardTerm("a", lambda c: c, float("inf"))
    with pytest.raises(InputError, match="reward terms: expected at least one term"):
        total({})
    terms = (RewardTerm("a", lambda c: c * 2, 0.5), RewardTerm("b", lambda c: -c, 3.0))
    values = weighted(terms, torch.tensor([1.0, 2.0]))
    assert list(values) == ["a", "b"] and torch.equal(total(values), torch.tensor([-2.0, -4.0]))
