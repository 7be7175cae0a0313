"""us_nav environment: API, determinism, resets, rewards, success and bad actions."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from sim.anatomy.patient_set import load_patients
from sim.envs.adapters.gymnasium import GymVectorEnv
from sim.envs.adapters.rsl_rl import RslRlVecEnv
from sim.errors import InputError
from sim.transforms import quat_to_matrix, rotation_log
from sim.ultrasound.placement import skin_state_from_pose
from tasks import make_env
from tasks.us_nav.expert import expert_actions
from tasks.us_nav.mdp.goals import goal_pose_table
from tests.tasks_helpers import SMALL_RUN, small_patient_set

STATE = {"name": "us_nav_state", "observation": {"images": False}}
IMAGES = {
    "name": "us_nav",
    "observation": {"images": True, "image_size": 32, "history": 2},
    "renderer": {"compile": False},
}


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


def random_actions(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [2 * torch.rand(n, 5, generator=g) - 1 for _ in range(30)]


def rollout(env, actions):
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs["critic"].clone(), reward.clone(), terminated.clone(), truncated.clone()))
    return out


def test_observation_groups_shapes_and_dtypes(patients):
    env = make_env(IMAGES, patients, 6, seed=0)
    obs = env.get_observations()
    assert set(obs.keys()) == {"policy", "image", "critic"}
    assert obs["image"].shape == (6, 3, 32, 64) and obs["image"].dtype == torch.float32  # biplane: 2 planes
    assert 0.0 <= obs["image"].min() and obs["image"].max() <= 1.0
    assert obs["image"][:, :2].std() > 0.01  # the probe touches the back: a real image, not blank
    assert obs["policy"].shape == (6, 10) and obs["critic"].shape == (6, 30)
    obs, reward, terminated, truncated, extras = env.step(torch.zeros(6, 5))
    assert reward.shape == (6,) and reward.dtype == torch.float32
    assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
    assert set(extras) >= {"time_outs", "log"}
    state = make_env(STATE, patients, 6, seed=0).get_observations()
    assert state["policy"].shape == (6, 16) and "image" not in state.keys()


def test_actor_inputs_other_than_images_do_not_name_the_patient(patients):
    """Another patient or goal behind the same probe state changes the critic's inputs (the
    anchor frame differs per patient), never the actor's non-image inputs: nothing there lets a
    policy look up the pose a goal image belongs to."""
    env = make_env(IMAGES, patients, 8, seed=5)
    env.step(2 * torch.rand(8, 5, generator=torch.Generator().manual_seed(0)) - 1)
    before = env.get_observations()
    env.patient_idx = (env.patient_idx + 1) % len(patients)
    env.goal_idx = torch.roll(env.goal_idx, 1)
    after = env.get_observations()
    assert torch.equal(before["policy"], after["policy"])
    assert not torch.allclose(before["critic"], after["critic"])


def test_goal_image_has_its_own_imaging_draw(patients):
    env = make_env(IMAGES, patients, 6, seed=6)  # us_nav randomises imaging by default
    at_goal = env.image(env.renderer, env.goal_pose, env.patient_idx, env.render_params(None))
    own = (env.goal_image - at_goal).abs().mean(dim=(1, 2))
    assert (own > 0.02).all()  # not the current image's draw (gain, tissue and speckle differ)
    offsets = env.render_speckle_offset
    assert offsets.unique(dim=0).shape[0] == 6 and ((offsets >= 0) & (offsets < 64)).all()
    nominal = {**IMAGES, "observation": {**IMAGES["observation"], "randomize_imaging": False}}
    plain = make_env(nominal, patients, 6, seed=6)  # without randomisation: the same nominal imaging
    expected = plain.image(plain.renderer, plain.goal_pose, plain.patient_idx, None)
    assert torch.allclose(plain.goal_image, expected, atol=1e-5)
    plain.episode_length_buf[2] = plain.max_episode_length - 1
    plain.step(torch.zeros(6, 5))  # env 2 times out and starts a new episode: its new goal's image
    expected = plain.image(plain.renderer, plain.goal_pose, plain.patient_idx, None)
    assert torch.allclose(plain.goal_image, expected, atol=1e-5)


def test_episodes_start_near_the_goal_plane(patients):
    start = {"around": "goal", "half_extent_m": [0.02, 0.03], "yaw_rad": [-0.6, 0.6]}
    env = make_env({**STATE, "start": start}, patients, 64, seed=7)
    goal_xz = env.goal_xz[env.patient_idx, env.goal_idx]
    assert ((env.xz - goal_xz).abs() <= torch.tensor([0.02, 0.03]) + 1e-6).all()
    turn = torch.remainder(env.yaw - env.goal_yaw[env.patient_idx, env.goal_idx] + math.pi, 2 * math.pi) - math.pi
    low, high = env.cfg.actions.yaw_range_rad
    at_range_end = torch.isclose(env.yaw, torch.tensor(low)) | torch.isclose(env.yaw, torch.tensor(high))
    assert ((turn.abs() <= 0.6 + 1e-5) | at_range_end).all() and (turn.abs() > 0.1).any()
    assert env.pos_err.max() < 0.05  # within the box, on the goal's own skin patch
    # Each episode keeps where it started (its evaluation groups episodes by the head-foot offset)
    # and logs it when it ends.
    start = torch.stack([env.pos_err, (env.xz - goal_xz)[:, 1].abs()], -1)
    assert torch.equal(env.start_error, start)
    env.episode_length_buf[0] = env.max_episode_length - 1
    log = env.step(torch.ones(64, 5))[-1]["log"]  # env 0 times out, the others move on
    assert log["Episode/start_position_error_mm"].tolist() == pytest.approx([1000 * start[0, 0].item()])
    assert log["Episode/start_head_foot_mm"].tolist() == pytest.approx([1000 * start[0, 1].item()])
    assert torch.equal(env.start_error[1:], start[1:]) and not torch.equal(env.pos_err[1:], start[1:, 0])
    with pytest.raises(InputError, match="task.start.around"):
        make_env({**STATE, "start": {"around": "navel"}}, patients, 2)


def test_goals_leaning_past_the_probes_tilt_get_the_nearest_pose_it_can_take(patients):
    """A plane that leans more than max_tilt_rad from the skin normal is not a pose the probe can
    take; its goal is the probe tilted that far toward it. The others are the planes themselves."""
    env = make_env(STATE, patients, 2, seed=0)
    levels, views, skin = env.cfg.goal.levels, env.cfg.goal.views, env.scene.skin
    # Unpressed (press_m 0): each goal sits where its skin normal was read.
    plane = goal_pose_table(patients, skin, levels, views, 0.0, math.inf).reshape(-1, 7)
    p, g = len(patients), len(levels) * len(views)
    _, normal = skin.query(torch.arange(p).repeat_interleave(g), plane[:, 0], plane[:, 2])

    def lean(poses: torch.Tensor, at: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """The beam's angle to the skin normal (rad) of goals `at`."""
        return torch.arccos(-(quat_to_matrix(poses[:, 3:])[:, :, 2] * normal[at]).sum(-1).clamp(-1, 1))

    limit = float(lean(plane).median())  # half the goals lean further
    goal = goal_pose_table(patients, skin, levels, views, 0.0, limit).reshape(-1, 7)
    past = lean(plane) > limit
    assert 0 < past.sum() < len(past)
    assert torch.allclose(lean(goal[past], past), torch.tensor(limit), atol=1e-3)
    assert torch.equal(goal[~past], plane[~past]) and torch.equal(goal[:, :3], plane[:, :3])
    # The turn from the plane's orientation is what the limit takes off its lean, and no more.
    turn = rotation_log(quat_to_matrix(plane[past, 3:]).transpose(-1, -2) @ quat_to_matrix(goal[past, 3:]))
    assert torch.allclose(turn.norm(dim=-1), lean(plane[past], past) - limit, atol=1e-3)
    yaw, tilt = skin_state_from_pose(goal, normal)  # a pose the action space reaches: tilt within the limit
    assert (tilt.norm(dim=-1) <= limit + 0.01).all()


def test_the_summary_groups_success_by_how_far_head_foot_episodes_started():
    from tasks.us_nav.contract import summary

    head_foot = torch.tensor([2.0, 9.9, 10.0, 15.0, 19.0, 35.0])  # mm: bins 0-10, 0-10, 10-20 (3), 30+
    success = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    episodes = {
        "success": success,
        "position_error_mm": torch.full((6,), 3.0),
        "angle_error_deg": torch.full((6,), 2.0),
        "steps": torch.full((6,), 10.0),
        "peak_force_n": torch.full((6,), 5.0),
        "Cost/contact_force": torch.zeros(6),
        "start_position_error_mm": torch.tensor([4.0, 10.0, 12.0, 16.0, 20.0, 36.0]),
        "start_head_foot_mm": head_foot,
    }
    metrics = summary(episodes, 0.1)
    assert metrics["success_rate_by_start_head_foot_mm"] == pytest.approx(
        {"0-10": 0.5, "10-20": 2 / 3, "20-30": None, "30+": 0.0}
    )
    assert metrics["start_pos_err_mm_mean"] == pytest.approx(98 / 6)


def test_wrap_into_moves_angles_by_whole_turns_and_else_to_the_nearer_end():
    from tasks.us_nav.env import wrap_into

    angles = torch.tensor([-math.pi - 0.6, math.pi, -1.0, 0.9, 2.0])
    expected = torch.tensor([-3.6, -math.pi, -1.0, 0.5, -3.6])
    assert torch.allclose(wrap_into(angles, -3.6, 0.5), expected)


def test_adapters_follow_rsl_rl_and_gymnasium(patients):
    env = make_env(STATE, patients, 4, seed=0)
    vec = RslRlVecEnv(env)
    assert (vec.num_envs, vec.num_actions, vec.max_episode_length) == (4, 5, 100)
    vec.episode_length_buf = torch.full((4,), 99)
    obs, rewards, dones, extras = vec.step(torch.zeros(4, 5))
    assert dones.tolist() == [1, 1, 1, 1] and extras["time_outs"].all()
    assert set(extras["log"]) >= {"Episode/success", "Episode/position_error_mm", "Episode/angle_error_deg"}
    gym_env = GymVectorEnv(make_env(STATE, patients, 4, seed=0))
    obs, _ = gym_env.reset(seed=3)
    assert gym_env.observation_space.contains(obs)
    obs, rewards, terminated, truncated, infos = gym_env.step(gym_env.action_space.sample())
    assert rewards.shape == (4,) and terminated.dtype == np.bool_
    gym_env.env.episode_length_buf.fill_(99)
    obs, _, _, truncated, infos = gym_env.step(np.zeros((4, 5), np.float32))
    assert truncated.all() and infos["_final_obs"].all() and np.isfinite(infos["position_error_mm"]).all()


def test_same_seed_same_rollout_and_other_seed_differs(patients):
    actions = random_actions(8, seed=1)
    a = rollout(make_env(STATE, patients, 8, seed=5), actions)
    b = rollout(make_env(STATE, patients, 8, seed=5), actions)
    c = rollout(make_env(STATE, patients, 8, seed=6), actions)
    assert all(torch.equal(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))
    assert not torch.equal(a[0][0], c[0][0])


def test_reset_is_per_environment(patients):
    env = make_env(STATE, patients, 4, seed=0)
    for _ in range(3):
        env.step(torch.zeros(4, 5))
    env.episode_length_buf[1] = env.max_episode_length - 1
    before = env.state_dict()
    _, _, terminated, truncated, _ = env.step(torch.zeros(4, 5))
    assert truncated.tolist() == [False, True, False, False]
    assert env.episode_length_buf.tolist() == [4, 0, 4, 4]
    # untouched environments keep their goal and patient; env 1 drew a new start
    keep = torch.tensor([0, 2, 3])
    assert torch.equal(env.goal_idx[keep], before["goal_idx"][keep])
    assert torch.equal(env.patient_idx[keep], before["patient_idx"][keep])
    assert not torch.equal(env.xz[1], before["xz"][1])


def test_moving_toward_the_goal_is_rewarded(patients):
    toward = make_env(STATE, patients, 32, seed=2)
    away = make_env(STATE, patients, 32, seed=2)
    obs_t, obs_a = toward.get_observations(), away.get_observations()
    reward_t, reward_a = [], []
    for _ in range(3):
        obs_t, r_t, *_ = toward.step(expert_actions(obs_t, toward.cfg))
        obs_a, r_a, *_ = away.step(-expert_actions(obs_a, away.cfg))
        reward_t.append(r_t)
        reward_a.append(r_a)
    assert torch.stack(reward_t).mean() > 0.5 and torch.stack(reward_a).mean() < -0.2
    assert (torch.stack(reward_t).sum(0) > torch.stack(reward_a).sum(0)).float().mean() > 0.9


def test_holding_the_goal_ends_the_episode_with_success(patients):
    env = make_env(STATE, patients, 32, seed=3)
    obs = env.get_observations()
    successes = 0
    for _ in range(env.max_episode_length):
        hold_before = env.hold.clone()
        obs, reward, terminated, truncated, extras = env.step(expert_actions(obs, env.cfg))
        if terminated.any():
            ids = terminated.nonzero()[:, 0]
            assert (hold_before[ids] == env.cfg.success.hold_steps - 1).all()
            assert (extras["log"]["Episode/success"] == terminated[terminated | truncated].float()).all()
            assert (extras["log"]["Episode/position_error_mm"][extras["log"]["Episode/success"] > 0] <= 5.0).all()
            assert (reward[ids] > env.cfg.reward.success - 1.0).all()  # the bonus, give or take a little progress
            successes += len(ids)
    assert successes >= 28  # the scripted expert reaches almost every goal


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_nan_inf_and_huge_actions_never_corrupt_state(patients, bad):
    env = make_env(IMAGES, patients, 4, seed=4)
    ref = make_env(IMAGES, patients, 4, seed=4)
    actions = torch.full((4, 5), bad)
    clamped = torch.nan_to_num(actions, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    for _ in range(5):
        obs, reward, *_ = env.step(actions)
        obs_ref, reward_ref, *_ = ref.step(clamped)
        assert all(torch.isfinite(v).all() for v in obs.values()) and torch.isfinite(reward).all()
        assert torch.equal(obs["critic"], obs_ref["critic"]) and torch.equal(obs["image"], obs_ref["image"])
        # Only the penalty on raw actions beyond [-1, 1] tells them apart (NaN counts as 0).
        excess = 0.0 if math.isnan(bad) else 5 * 9.0**2 * env.cfg.reward.action_excess  # overshoot capped at 9
        assert torch.allclose(reward_ref - reward, torch.full_like(reward, excess))
    state = env.state_dict()
    assert all(torch.isfinite(state[k].float()).all() for k in env.state_names) and state["scene"] == {}


def test_actions_move_the_probe_by_at_most_their_bounds(patients):
    env = make_env(STATE, patients, 16, seed=5)
    cfg = env.cfg.actions
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        xz, yaw, tilt = env.xz.clone(), env.yaw.clone(), env.tilt.clone()
        env.step(2 * torch.rand(16, 5, generator=g) - 1)
        moved = env.episode_length_buf > 0
        assert ((env.xz - xz)[moved].norm(dim=-1) <= cfg.translation_m * math.sqrt(2) + 1e-6).all()
        assert ((env.yaw - yaw)[moved].abs() <= cfg.yaw_rad + 1e-6).all()
        assert ((env.tilt - tilt)[moved].abs() <= cfg.tilt_rad + 1e-6).all()
        assert (env.tilt.norm(dim=-1) <= cfg.max_tilt_rad + 1e-6).all()


def test_bad_input_names_the_input(patients):
    env = make_env(STATE, patients, 2, seed=0)
    with pytest.raises(InputError, match="actions"):
        env.step(torch.zeros(3, 5))
    with pytest.raises(InputError, match="actions"):
        env.step(np.zeros((2, 5)))
    with pytest.raises(InputError, match=r"task 'us_fly'"):
        make_env({"name": "us_fly"}, patients, 2)
    with pytest.raises(InputError, match=r"task config.observation keys \['colour'\]"):
        make_env({"name": "us_nav", "observation": {"colour": True}}, patients, 2)
    with pytest.raises(InputError, match="num_envs"):
        make_env(STATE, patients, 0)
    with pytest.raises(InputError, match="vertebrae_T9"):
        make_env({"name": "us_nav_state", "goal": {"levels": ["vertebrae_T9"]}}, patients, 2)


def test_gymnasium_ids_build_vector_envs():
    import gymnasium as gym  # importing tasks (above) registered the ids

    envs = gym.make_vec("Sonolab-UsNavState-v0", num_envs=2, backend="torch", overrides=SMALL_RUN)
    obs, _ = envs.reset(seed=1)
    obs, reward, terminated, truncated, _ = envs.step(np.zeros((2, 5), np.float32))
    assert obs["policy"].shape == (2, 16) and reward.shape == (2,)


def test_isaaclab_backend_settings_and_missing_install():
    from sim.backends import make_scene
    from tasks.us_nav.config import UsNavCfg
    from tasks.us_nav.env import UsNavEnv

    scene = UsNavEnv.scene_cfg(UsNavCfg())
    # conf/backend/isaaclab.yaml against IsaacLabCfg: tests/test_config_source.py
    if importlib.util.find_spec("isaaclab") is None:
        with pytest.raises(InputError, match=r'pip install -e "\.\[isaac\]"'):
            make_scene({"name": "isaaclab"}, [], scene, 1, "cpu")
    with pytest.raises(InputError, match="backend 'mujoco'"):
        make_scene("mujoco", [], scene, 1, "cpu")


def test_a_built_scene_is_used_as_it_is(patients):
    from sim.backends.torch import TorchScene
    from tasks.us_nav.config import UsNavCfg
    from tasks.us_nav.env import UsNavEnv

    scene = TorchScene(patients, UsNavEnv.scene_cfg(UsNavCfg()), "cpu")
    env = make_env(STATE, patients, num_envs=2, backend=scene)
    assert env.scene is scene
    with pytest.raises(InputError, match="built for 2 patients, the task has 1"):
        make_env(STATE, patients[:1], num_envs=2, backend=scene)
    other = TorchScene(patients, UsNavEnv.scene_cfg(UsNavCfg(anchor="vertebrae_L4")), "cpu")
    with pytest.raises(InputError, match="backend: built for scene"):
        make_env(STATE, patients, num_envs=2, backend=other)
