"""us_surgery on small phantoms: the expert drills its plans, costs follow the channel, the drill is
imaged, the episode ends as the task says, and bad settings are refused by name.

(The environment contract, exact resume and sync-free steps of every task: tests/test_all_tasks.py
and tests/test_sync_free.py; drilling physics and breach geometry: tests/test_drilling.py and
tests/test_breach.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

from policies.evaluation import evaluate
from sim.anatomy.patient_set import load_patients
from sim.errors import InputError
from sim.surgery.breach import DIRECTIONS
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp
from tasks import make_env, registry
from tests.tasks_helpers import small_patient_set

SMALL = {"renderer": {"compile": False}, "observation": {"image_size": 32}}


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


def state_env(patients, n: int = 10, seed: int = 0, **settings):
    return make_env({"name": "us_surgery_state", **settings}, patients, n, seed=seed)


def test_the_expert_drills_its_plans_without_breach(patients):
    env = state_env(patients, 20)
    metrics = evaluate(env, registry.spec("us_surgery_state").expert(env))
    assert metrics["success_rate"] >= 0.9, metrics
    assert metrics["grade_fractions"]["A"] + metrics["grade_fractions"]["B"] == 1.0, metrics
    assert metrics["tip_err_mm_mean"] < 2.0 and metrics["angle_err_deg_mean"] < 2.0, metrics
    # On plan, the breach cost stays (nearly) zero: at most a grade-B graze of the 2 mm phantom's walls.
    assert metrics["ep_cost_mean"] < 1.0, metrics


def drill_along(env, rot_offset: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """In the episodes env has just started, put every drill 1 mm before its plan's entry with its axis
    turned by rot_offset (3,) or (N, 3) (a rotation vector in the drill frame: x points superior, y to
    the patient's right), then feed at full command until the drilled depth reaches the planned length
    (then stop); each environment's first episode log and summed breach cost."""
    entry, _, axis = env.plan()
    length = env.plans.length_m[env.patient_idx, env.goal_idx]
    env.tip[:] = entry - axis * 1e-3
    env.quat[:] = matrix_to_quat(quat_to_matrix(env.quat) @ rotation_exp(rot_offset.expand(env.num_envs, 3)))
    cost, done = torch.zeros(env.num_envs), torch.zeros(env.num_envs, dtype=torch.bool)
    log = {}
    for _ in range(env.max_episode_length):
        action = torch.zeros(env.num_envs, env.num_actions)
        action[:, 5] = (env.depth < length - 1e-3).float()
        _, _, terminated, truncated, extras = env.step(action)
        cost += extras["costs"]["breach_mm"] * ~done
        ids = (terminated | truncated).nonzero()[:, 0]
        first = ~done[ids]  # each environment's first episode only
        for key, value in extras["log"].items():
            log.setdefault(key, torch.full((env.num_envs,), float("nan")))[ids[first]] = value[first]
        done[ids] = True
        if done.all():
            break
    return log, cost


def test_costs_are_zero_on_the_plan_and_grow_off_it(patients):
    env = state_env(patients, 6, start={"standoff_m": 0.012, "offset_m": 0.0, "tilt_rad": 0.0})
    log, on_plan = drill_along(env, torch.zeros(3))
    assert log["Episode/success"].all(), log
    env = state_env(patients, 6, start={"standoff_m": 0.012, "offset_m": 0.0, "tilt_rad": 0.0})
    # 30 deg about the drill's y (toward inferior): out through the pedicle's lower wall, over 4 mm
    # (grade D, a failure) in every one. (At 25 deg the breaches are 3-4 mm, C or D by the anatomy.)
    log, off_plan = drill_along(env, torch.tensor([0.0, math.radians(30.0), 0.0]))
    assert float(on_plan.max()) == 0.0 and float(off_plan.min()) > 1.0, (on_plan, off_plan)
    assert log["Episode/failure"].bool().all() and (log["Episode/grade"] >= 3).all(), log
    assert (log["Cost/breach_mm"] > 0).all()


def test_a_medial_drill_breaches_toward_the_canal(patients):
    env = state_env(patients, 6, start={"standoff_m": 0.012, "offset_m": 0.0, "tilt_rad": 0.0})
    env.reset()
    # About the drill's x (superior) a positive turn swings the bit toward the patient's left: medial
    # for a right plan, lateral for a left one.
    side = env.side_sign[env.goal_idx]
    turn = torch.zeros(env.num_envs, 3)
    turn[:, 0] = side * math.radians(25.0)
    log, cost = drill_along(env, turn)
    medial = DIRECTIONS.index("medial")
    # Every one breaks medially through the pedicle's thin wall into the spinal canal: a failure.
    assert log["Episode/failure"].bool().all() and log["Episode/in_canal"].bool().all(), log
    assert (log["Episode/direction"] == medial).all() and log["Episode/medial_breach"].bool().all(), log
    assert (cost > 0).all()


def test_the_drill_is_in_the_image(patients):
    straight = {"standoff_m": 0.012, "offset_m": 0.0, "tilt_rad": 0.0}
    env = make_env({"name": "us_surgery", **SMALL, "start": straight}, patients, 4)
    env.reset()
    snap = env.snapshot()
    without = env.reset_renderer.render(env.probe_pose, env.patient_idx, None)
    with_drill = env.reset_renderer.render(env.probe_pose, env.patient_idx, None, tools=snap.imaged_tools)
    assert torch.equal(env.history[:, 0], with_drill)
    changed = (with_drill - without).abs().amax(dim=(1, 2))
    assert (changed > 0.2).all(), changed  # the drill starts on the planned axis, in the image plane


def test_bad_settings_are_refused_by_name(patients):
    with pytest.raises(InputError, match="patients lack screw plans"):
        state_env(patients, 2, goal={"levels": ["vertebrae_L6"]})
    with pytest.raises(InputError, match="task.drill.length_m.*longest planned channel"):
        state_env(patients, 2, drill={"length_m": 0.02})
    with pytest.raises(InputError, match="task.drill.length_m.*reach"):
        far = {"robot": "panda", "tool_frame": "drill_tip", "base_position_m": [-1.6, 0.0, 0.0]}
        state_env(patients, 2, drill_arm={**far, "base_quat_wxyz": [math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0]})
    with pytest.raises(InputError, match="task.success.fail_grade"):
        state_env(patients, 2, success={"fail_grade": "B"})
    with pytest.raises(InputError, match="task.goal.sides"):
        state_env(patients, 2, goal={"sides": ["middle"]})


def test_an_external_controller_drills_no_faster_than_the_tissue_allows(patients):
    env = state_env(patients, 4, start={"standoff_m": 0.012, "offset_m": 0.0, "tilt_rad": 0.0})
    _, target, axis = env.plan()
    start = env.tip.clone()
    deep = torch.cat([target + axis * 0.01, env.quat], -1)  # 1 cm past the planned target
    steps = 0
    while not bool(env.entered.all()) and steps < 100:
        env.drive_tools({"drill": deep})
        steps += 1
    assert env.entered.all()
    travelled = ((env.tip - start) * axis).sum(-1)
    # Through the 12 mm of soft tissue at 6 mm/s of free feed (0.2 s steps), then cortex at a tenth of it.
    assert (travelled <= steps * env.cfg.drill.max_feed_m_s * env.dt + 1e-6).all(), (travelled, steps)
    assert (env.depth < 0.005).all()  # the bit is in bone, not at the far target


def test_the_entry_hole_holds_the_bit(patients):
    env = state_env(patients, 4, start={"standoff_m": 0.012, "offset_m": 0.0, "tilt_rad": 0.0})
    entry, _, axis = env.plan()
    env.tip[:] = entry - axis * 1e-3
    feed = torch.zeros(env.num_envs, env.num_actions)
    feed[:, 5] = 1.0
    while not bool((env.entered & (env.depth > 1e-3)).all()):
        env.step(feed * ~(env.entered & (env.depth > 1e-3))[:, None])
    before = quat_to_matrix(env.quat)[:, :, 2]
    push = torch.zeros(env.num_envs, env.num_actions)
    push[:, 0] = 1.0  # a full push across the bit, 1-3 mm into bone
    env.step(push)
    turned = torch.acos((quat_to_matrix(env.quat)[:, :, 2] * before).sum(-1).clamp(max=1.0))
    assert (turned <= env.cfg.actions.tilt_rad * 1.001).all(), turned
    assert (turned > 0).all()  # the bone yields a little
