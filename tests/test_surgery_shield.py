"""us_surgery's geometric shield (`ShieldCfg`, `tasks.us_surgery.mdp.shield`): a random policy's drill
stays in the plan's widened corridor (and leaves it without the shield), an action inside passes
unchanged, an action outside is projected onto the corridor's boundary (not zeroed), bad settings
are refused by name, and the deploy controller shields as the environment does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from policies.cli.deploy import check_settings, set_shield
from policies.workflow import compose_config
from sim.errors import InputError
from sim.robot.safety import ExportSettings
from sim.transforms import quat_to_matrix, rotation_exp
from tasks import make_env, registry
from tasks.us_surgery.config import ActionCfg, ShieldCfg
from tasks.us_surgery.deploy import Controller, SimDrillRobot, deployment_spec
from tasks.us_surgery.mdp import drill_motion, shield
from tests.host_sync import HostSyncGuard
from tests.test_surgery_deploy import EXACT_TRACKING, SETTINGS
from tests.test_sync_free import RESET_DECISION
from tests.test_us_surgery import patients, state_env  # noqa: F401 (the module's patients fixture)

ON = {"enabled": True}
BONE_TOLERANCE_M = 2e-4  # the bone may move the tip a little beyond what was commanded


def corridor_excess(env) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) each: metres the tips lie radially beyond the corridor's radius and past its depth
    stop, and radians the drill axes lie beyond its cone."""
    cfg = env.cfg.shield
    entry, target, axis = env.plan()
    s, v = shield.coordinates(env.tip, entry, axis)
    radial = v.norm(dim=-1) - shield.allowed_radius(s, cfg)
    depth = s - (target - entry).norm(dim=-1) - cfg.depth_margin_m
    angle = shield.axis_angle(quat_to_matrix(env.quat)[:, :, 2], axis) - cfg.angle_rad
    return radial, depth, angle


def random_run(env, seed: int = 0) -> tuple[float, float, float, list[torch.Tensor], bool]:
    """Uniform random actions for one episode length: the worst radial, depth and angle excess over
    every step, the episodes' logged shield interventions, and whether any drill was in bone."""
    gen = torch.Generator().manual_seed(seed)
    worst, logged, in_bone = [0.0, 0.0, 0.0], [], False
    for _ in range(env.max_episode_length):
        _, _, _, _, extras = env.step(torch.rand(env.num_envs, 6, generator=gen) * 2 - 1)
        in_bone |= bool(env.entered.any())
        worst = [max(w, float(e.max())) for w, e in zip(worst, corridor_excess(env))]
        if "Episode/shield_interventions" in extras["log"]:
            logged.append(extras["log"]["Episode/shield_interventions"])
    return *worst, logged, in_bone


def test_the_shield_keeps_a_random_drill_in_the_corridor(patients):  # noqa: F811
    env = state_env(patients, 16, episode_steps=100, shield=ON)
    assert "shield_interventions" in env.state_names  # exact resume keeps the count
    radial, depth, angle, logged, in_bone = random_run(env)
    assert in_bone  # the random drill also pushes and tilts in bone
    assert radial <= BONE_TOLERANCE_M and depth <= BONE_TOLERANCE_M and angle <= 1e-5, (radial, depth, angle)
    counts = torch.cat(logged)
    assert len(counts) == 16 and (counts > 0).all(), counts


def test_shielded_steps_are_sync_free(patients):  # noqa: F811
    env = state_env(patients, 4, shield=ON)
    gen = torch.Generator().manual_seed(1)
    with HostSyncGuard(allowed={RESET_DECISION}):
        for _ in range(3):
            env.step(torch.rand(4, 6, generator=gen) * 2 - 1)
    assert (env.shield_interventions > 0).any()


def test_without_the_shield_a_random_drill_leaves_the_corridor(patients):  # noqa: F811
    env = state_env(patients, 16, episode_steps=100)
    assert "shield_interventions" not in env.state_names  # the state of a run without the shield as it was
    radial, _, angle, logged, _ = random_run(env)
    assert radial > 0.005 and angle > math.radians(10.0), (radial, angle)
    assert (torch.cat(logged) == 0).all()


def test_an_action_inside_the_corridor_passes_unchanged(patients):  # noqa: F811
    env = state_env(patients, 10, shield=ON)
    expert = registry.spec("us_surgery_state").expert(env)
    obs, steps, done = env.get_observations(), 0, torch.zeros(10, dtype=torch.bool)
    counts = torch.zeros(10)
    while not bool(done.all()) and steps < env.max_episode_length:
        action = expert(obs)
        entry, target, axis = env.plan()
        projected, intervened = shield.project(
            action, env.tip, quat_to_matrix(env.quat), env.entered, env.depth, entry, target, axis,
            env.cfg.actions, env.cfg.drill.max_feed_m_s * env.dt, env.cfg.shield,
        )  # fmt: skip
        assert torch.equal(projected[~done], action[~done]) and not intervened[~done].any(), steps
        obs, _, terminated, truncated, extras = env.step(action)
        ended = terminated | truncated
        if ended.any():
            counts[ended & ~done] = extras["log"]["Episode/shield_interventions"][(~done)[ended]]
        done |= ended
        steps += 1
    assert done.all() and (counts == 0).all()


# A plan along patient z from the origin, 40 mm long; the drill's frame the patient's (z along the plan).
ENTRY, TARGET, AXIS = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 0.04]]), torch.tensor([[0.0, 0.0, 1.0]])
ACTIONS = ActionCfg(translation_m=0.001, tilt_rad=0.03)
NARROW = ShieldCfg(enabled=True, margin_m=0.0005, angle_rad=0.01, depth_margin_m=0.001)
FEED_STEP_M = 0.0012


def shielded(action, tip, cfg: ShieldCfg = NARROW) -> tuple[torch.Tensor, bool]:
    """The shield's action (6,) for a drill in soft tissue with its tip (3,) and axis along the plan."""
    projected, intervened = shield.project(
        torch.tensor([action]), torch.tensor([tip]), torch.eye(3)[None], torch.zeros(1, dtype=torch.bool),
        torch.zeros(1), ENTRY, TARGET, AXIS, ACTIONS, FEED_STEP_M, cfg,
    )  # fmt: skip
    return projected[0], bool(intervened[0])


def test_the_shield_projects_and_does_not_zero():
    on_axis = [0.0, 0.0, 0.005]  # 5 mm past the entry
    # 1 mm across with a 0.5 mm margin: a 0.5 mm move across; the axial part of the step is kept.
    got, intervened = shielded([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], on_axis)
    assert intervened and torch.allclose(got, torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]), atol=1e-6), got
    got, _ = shielded([0.8, 0.0, 0.5, 0.0, 0.0, 0.3], on_axis)
    assert torch.allclose(got, torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0, 0.3]), atol=1e-6), got
    # A full tilt (0.03 rad) against a 0.01 rad cone ends on the cone's boundary, turning the same way.
    got, intervened = shielded([0.0, 0.0, 0.0, 1.0, -0.2, 0.0], on_axis)
    _, tilt = drill_motion.commanded_motion(got[None], ACTIONS, torch.eye(3)[None])
    z = rotation_exp(tilt)[0, :, 2]
    assert intervened and abs(float(shield.axis_angle(z[None], AXIS)) - 0.01) < 1e-6, z
    assert got[3] > 0 > got[4] and got[3] / -got[4] == pytest.approx(5.0, rel=1e-4)
    # The feed stops at the depth stop: 0.5 mm short of it, at most 0.5 mm of the 1.2 mm a step feeds.
    got, intervened = shielded([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0405])
    assert intervened and float(got[5]) == pytest.approx(0.5 / 1.2, rel=1e-4)
    # Before the entry the funnel is wider (0.5 + 0.5 tan(15 deg) mm half a mm before it): a 1 mm move
    # across ends on the funnel's wall.
    start = torch.tensor([[0.0, 0.0, -0.0005]])
    got, intervened = shielded([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], start[0].tolist())
    s, v = shield.coordinates(start + got[None, :3] * ACTIONS.translation_m, ENTRY, AXIS)
    assert intervened and float(v.norm() - shield.allowed_radius(s, NARROW)) == pytest.approx(0.0, abs=1e-9)
    assert 0.0005 < float(v.norm()) < 0.001
    # A tip outside (as the bone may leave it) is brought back by at most a step.
    got, intervened = shielded([0.0] * 6, [0.0015, 0.0, 0.005])
    assert intervened and torch.allclose(got, torch.tensor([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), atol=1e-6), got
    # An action inside is returned as it is.
    inside = [0.2, -0.1, 0.3, 0.1, 0.1, 0.5]
    got, intervened = shielded(inside, on_axis)
    assert not intervened and torch.equal(got, torch.tensor(inside))


@pytest.mark.parametrize(
    "setting, match",
    [
        ({"margin_m": -0.001}, "task.shield.margin_m"),
        ({"funnel_rad": 0.0}, "task.shield.funnel_rad"),
        ({"angle_rad": math.radians(60.0)}, "task.shield.angle_rad"),
        ({"depth_margin_m": float("nan")}, "task.shield.depth_margin_m"),
        ({"enabled": "yes"}, "task.shield.enabled"),
        ({"enabled": True, "margin_m": 0.0005, "funnel_rad": 0.1}, "task.shield.funnel_rad: expected a funnel holding"),
        ({"enabled": True, "angle_rad": 0.05}, "task.shield.angle_rad: expected at least the start's largest tilt"),
    ],
)
def test_bad_shield_settings_are_refused_by_name(patients, setting, match):  # noqa: F811
    with pytest.raises(InputError, match=match):
        state_env(patients, 2, shield=setting)


def test_the_deploy_controller_shields_as_the_environment(patients):  # noqa: F811
    env = make_env({"name": "us_surgery_state", "tracking": EXACT_TRACKING, "shield": ON}, patients, 1, seed=3)
    spec = json.loads(json.dumps(deployment_spec(env, ExportSettings.from_dict(SETTINGS))))  # as deploy.json
    assert spec["task"]["config"]["shield"]["enabled"] is True
    controller, robot = Controller(spec), SimDrillRobot(env)
    controller.start(robot.start(), robot.read())
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        state = robot.read()
        if step:
            controller.observe(state)
        controller.inputs(state)
        action = (torch.rand(1, 6, generator=gen) * 2 - 1).numpy()[0]
        controller.target(action)
        env.step(torch.from_numpy(action)[None])
        np.testing.assert_allclose(controller.last_action[0].numpy(), env.action[0].numpy(), atol=1e-5)
        assert int(env.episode_length_buf[0]) == step + 1  # one episode throughout
    assert controller.report["shield_interventions"] == int(env.shield_interventions[0]) > 0


def test_deploy_turns_the_shield_on_or_off(patients):  # noqa: F811
    spec = {"task": {"name": "us_surgery_state", "config": {"shield": {"enabled": False, "margin_m": 0.003}}}}
    set_shield(spec, True)
    assert spec["task"]["config"]["shield"] == {"enabled": True, "margin_m": 0.003}
    set_shield(spec, None)  # as exported
    assert spec["task"]["config"]["shield"]["enabled"] is True
    with pytest.raises(InputError, match="deploy.shield"):
        set_shield({"task": {"name": "us_nav_state", "config": {}}}, True)
    with pytest.raises(InputError, match="deploy.shield: expected null, true or false"):
        check_settings(compose_config(["deploy.shield=3"]).deploy)
