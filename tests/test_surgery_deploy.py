"""us_surgery on a robot: a briefly trained drilling policy exports, runs in the reference runtime on
the simulated drill robot (directly and over the network bridge), its controller is the
environment's twin, and the drill's safety limits (feed, thrust) hold and cannot be relaxed."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.deploy.frames import Channel, ProtocolError
from policies.deploy.network import NetworkRobot, RobotGuard, _send_state, serve_robot
from policies.deploy.policy import ExportedPolicy, write_manifest
from policies.deploy.robot import Reports, RobotState, Session, check_state
from policies.deploy.runtime import Runtime
from policies.trajectory import load_trajectory
from policies.workflow import build_env, compose_config, trained_run
from sim.anatomy.patient_set import load_patients
from sim.errors import InputError
from sim.robot.safety import ExportSettings, SafetyLimits, SafetyMonitor
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp
from tasks import make_env, registry
from tasks.us_surgery.deploy import Controller, SimDrillRobot, deployment_spec
from tasks.us_surgery.spaces import ACTION_NAMES
from tests.tasks_helpers import LIMITS, SMALL_RUN, small_patient_set
from tests.test_deploy import last_line, script, training_actions

EXACT_TRACKING = {"registration_m": 0.0, "registration_rad": 0.0, "tracking_m": 0.0, "tracking_rad": 0.0}
# A short drilling episode, and a navigation system without registration or tracking noise: the
# simulated robot's tracker is exact, so play and deploy see the same inputs.
TASK = ["task.episode_steps=25", *(f"task.tracking.{k}=0.0" for k in EXACT_TRACKING)]
QUICK = ["num_envs=8", "agent.num_steps_per_env=4", "agent.max_iterations=2", *TASK, *SMALL_RUN]
SETTINGS = {"samples": 8, "max_force_n": 25.0, "speed_margin": 2.0, "workspace_margin_m": 0.03, "stop_margin_m": 0.01}
SMALL_IMAGES = {"renderer": {"compile": False}, "observation": {"image_size": 32}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A two-iteration us_surgery_state training with its exported folder."""
    root = tmp_path_factory.mktemp("surgery")
    run = Path(last_line(script("train.py", "task=us_surgery_state", *QUICK, f"log_root={root}")))
    # The run folder alone names the task (the command line's default task is us_nav's).
    exported = script("export.py", f"checkpoint={run}", "export.samples=16", *SMALL_RUN)
    assert Path(last_line(exported)) == run / "exported"
    return run


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


def sim_drill_robot(run: Path, seed: int) -> SimDrillRobot:
    """The simulated drill robot as deploy.py builds it: a one-environment run of the run's task."""
    cfg = compose_config([f"seed={seed}", f"checkpoint={run}", *SMALL_RUN])
    trained_run(cfg)
    torch.manual_seed(seed)
    return registry.load_sim_robot(cfg.task.name)(build_env(cfg, "train", num_envs=1))


def test_export_describes_the_drill_robot_and_matches_training(run_dir):
    folder = run_dir / "exported"
    spec = ExportedPolicy(folder, "torchscript").spec  # read back through the manifest and the schema
    samples = np.load(folder / "samples.npz")
    (policy_input,) = spec["observation"]["inputs"]
    assert policy_input["name"] == "policy" and sum(s["size"] for s in policy_input["layout"]) == 31
    assert samples["input/policy"].shape[1] == policy_input["shape"][1] == 31
    assert spec["action"]["names"] == list(ACTION_NAMES) and spec["action"]["units"][-1] == "m"
    assert spec["robot"]["name"] == "panda" and spec["robot"]["tool_frame"] == "drill_tip"
    assert len(spec["robot"]["joints"]) == 7 and list(spec["robot"]["reports"]["tool_poses"]) == ["probe"]
    assert sorted(spec["robot"]["reports"]["signals"]) == ["drilled_depth_m", "in_bone", "thrust_n"]
    safety = spec["safety"]
    assert safety["max_feed_m_s"] == 0.006 and safety["max_thrust_n"] == 20.0 and safety["max_force_n"] == 25.0
    inputs = {"policy": samples["input/policy"]}
    reference = training_actions(run_dir, inputs)
    np.testing.assert_allclose(samples["actions"], reference, atol=1e-6)
    for engine in ("onnx", "torchscript"):
        assert np.abs(ExportedPolicy(folder, engine)(inputs) - reference).max() <= 1e-5, engine


def test_runtime_on_the_simulated_drill_robot_follows_play(run_dir):
    played = json.loads(
        last_line(script("play.py", f"checkpoint={run_dir}", "num_envs=1", "seed=5", "trajectory=true", *SMALL_RUN))
    )
    reference = load_trajectory(played["trajectory"])
    deployed = json.loads(
        last_line(script("deploy.py", f"checkpoint={run_dir}", "seed=5", "deploy.engine=torchscript", *SMALL_RUN))
    )
    assert deployed["episodes"][0]["status"] == "done"
    runtime = load_trajectory(deployed["episodes"][0]["trajectory"])
    # Both record the drill (its tip pose and the drill arm's joints) and start from the same state.
    for key in ("poses", "q", "actions", "input/policy"):
        np.testing.assert_array_equal(runtime[key][0], reference[key][0], err_msg=key)
    # Then the robot drills toward its targets by the task's physics (drive_tools), which turns each
    # target back into the action: through the soft tissue the paths agree but for rounding (and an
    # axial translation, which a pose target gives as feed). Once the bit is in bone they part: the
    # channel's re-aim at a shallow depth turns the drill by tens of degrees in a step, and the
    # runtime's angular speed limit holds the target back from such a turn.
    soft = soft_steps(runtime, reference)
    assert soft >= 5, soft
    np.testing.assert_allclose(runtime["poses"][:soft, :3], reference["poses"][:soft, :3], atol=1e-4)
    np.testing.assert_allclose(runtime["input/policy"][:soft], reference["input/policy"][:soft], atol=1e-2)
    # The bit never advances along itself faster than the feed limit (6 mm/s, 0.2 s steps).
    advance = drill_advance(runtime["poses"])
    assert advance.max() <= 0.006 * 0.2 + 1e-6, advance.max()


IN_BONE = 9 + 6 + 2  # the in_bone segment of the policy input (`tasks.us_surgery.spaces`)


def soft_steps(*trajectories: dict) -> int:
    """The steps before the bit first enters bone in any of the trajectories."""
    steps = min(len(t["actions"]) for t in trajectories)
    inside = np.any([t["input/policy"][:steps, IN_BONE] > 0.5 for t in trajectories], 0)
    return int(np.argmax(inside)) if inside.any() else steps


def drill_advance(poses: np.ndarray) -> np.ndarray:
    """(T - 1,) how far each step moved the tip along the previous pose's z axis (the bit), metres."""
    w, x, y, z = poses[:-1, 3:].T
    bit = np.stack([2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y)], -1)
    return ((poses[1:, :3] - poses[:-1, :3]) * bit).sum(-1)


def twin_run(env, steps: int, gen: torch.Generator) -> int:
    """Step `env` (one environment) by drilling actions and require, at every step, the controller's
    inputs from the simulated drill robot's readings to be the environment's observations; in soft
    tissue its target must also be where the action puts the drill. Returns the steps taken in bone."""
    spec = json.loads(json.dumps(deployment_spec(env, ExportSettings.from_dict(SETTINGS))))  # as deploy.json
    controller, robot, reports = Controller(spec), SimDrillRobot(env), Reports.from_spec(spec["robot"])
    session = robot.start()
    state = check_state(robot.read(), 7, reports)
    controller.start(session, state)
    in_bone = 0
    for step in range(steps):
        if step:
            state = check_state(robot.read(), 7, reports)
            controller.observe(state)
        inputs, observed = controller.inputs(state), env.get_observations()
        assert sorted(inputs) == sorted(k for k in observed.keys() if k != "critic")
        for name, value in inputs.items():
            np.testing.assert_array_equal(value, observed[name].numpy(), err_msg=f"{name} at step {step}")
        action = np.concatenate([0.6 * (torch.rand(5, generator=gen).numpy() - 0.5), [1.0]]).astype(np.float32)
        target = controller.target(action)
        soft = not bool(env.entered[0])
        env.step(torch.from_numpy(action)[None])  # the training path: the action itself
        if soft and not bool(env.entered[0]):
            np.testing.assert_allclose(target, env.snapshot().extras["drill_command"][0].numpy(), atol=2e-6)
        in_bone += int(bool(env.entered[0]))
        assert int(env.episode_length_buf[0]) == step + 1  # one episode throughout
    return in_bone


def test_controller_inputs_are_the_environments_observations(patients):
    env = make_env({"name": "us_surgery_state", "tracking": EXACT_TRACKING}, patients, 1, seed=3)
    assert twin_run(env, 40, torch.Generator().manual_seed(0)) >= 10  # through soft tissue and into bone


def test_controller_images_are_the_environments(patients):
    env = make_env({"name": "us_surgery", "tracking": EXACT_TRACKING, **SMALL_IMAGES}, patients, 1, seed=4)
    twin_run(env, 6, torch.Generator().manual_seed(1))


def drill_pose(position, rotvec=(0.0, 0.0, 0.0)) -> np.ndarray:
    quat = matrix_to_quat(rotation_exp(torch.tensor([rotvec], dtype=torch.float64)))[0].numpy()
    return np.concatenate([position, quat]).astype(np.float32)


DRILL_LIMITS = replace(LIMITS, max_feed_m_s=0.006, max_thrust_n=20.0)


def test_safety_stops_on_thrust_above_its_limit():
    monitor = SafetyMonitor(DRILL_LIMITS, anchor_m=np.zeros(3), dt_s=0.2)
    q, here = np.zeros(7), drill_pose([0.0, -0.1, 0.0])
    assert monitor.check(q, here, 5.0, {"thrust_n": 19.0}) is None
    assert "drill thrust 25.0 N above the limit 20.0 N" in monitor.check(q, here, 5.0, {"thrust_n": 25.0})
    assert "drill thrust not reported" in monitor.check(q, here, 5.0, {})
    assert "not finite" in monitor.check(q, here, 5.0, {"thrust_n": float("nan")})
    # A probe robot's limits have no thrust limit: its monitor reads no signal.
    assert SafetyMonitor(LIMITS, np.zeros(3), 0.2).check(q, here, 5.0) is None


def test_safety_clamps_a_feed_beyond_its_limit():
    monitor = SafetyMonitor(DRILL_LIMITS, anchor_m=np.zeros(3), dt_s=0.2)
    tilted = (0.3, -0.2, 0.1)
    here = drill_pose([0.0, -0.1, 0.0], tilted)
    bit = rotation_exp(torch.tensor([tilted], dtype=torch.float64))[0, :, 2].numpy()
    across = np.cross(bit, [1.0, 0.0, 0.0])
    across /= np.linalg.norm(across)
    fast = drill_pose(here[:3] + 0.005 * bit + 0.002 * across, tilted)  # 25 mm/s along the bit, 6 mm/s limit
    clamped, why = monitor.clamp(fast, here)
    assert why == ["feed"]
    np.testing.assert_allclose(np.dot(clamped[:3] - here[:3], bit), 0.006 * 0.2, atol=1e-6)
    np.testing.assert_allclose(np.dot(clamped[:3] - here[:3], across), 0.002, atol=1e-6)  # across: untouched
    assert monitor.clamp(drill_pose(here[:3] + 0.001 * bit, tilted), here)[1] == []  # within the feed
    assert monitor.clamp(drill_pose(here[:3] - 0.005 * bit, tilted), here)[1] == []  # backing out is no feed
    # A probe robot's limits clamp the same step by its speed only.
    assert SafetyMonitor(LIMITS, np.zeros(3), 0.2).clamp(fast, here)[1] == []


def test_drill_limits_are_bounded_and_optional():
    for key, value, match in [
        ("max_feed_m_s", 0.02, r"max_feed_m_s: expected a finite number in \(0, 0.01\] m/s, got 0.02"),
        ("max_feed_m_s", None, r"max_feed_m_s: expected a finite number"),
        ("max_thrust_n", 31.0, r"max_thrust_n: expected a finite number in \(0, 30\] N"),
        ("max_thrust_n", float("inf"), r"max_thrust_n: expected a finite number"),
    ]:
        with pytest.raises(InputError, match=match):
            SafetyLimits.from_dict({**DRILL_LIMITS.to_dict(), key: value})
    assert sorted(LIMITS.to_dict()) == sorted(
        ["workspace_low_m", "workspace_high_m", "max_speed_m_s", "max_angular_speed_rad_s", "stop_speed_m_s"]
        + ["max_force_n", "stop_margin_m"]
    )  # a probe robot's deploy.json has the keys it always had
    with pytest.raises(InputError, match="export.max_thrust_n"):
        ExportSettings.from_dict({**SETTINGS, "max_thrust_n": 40.0})


def edited(run_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of the exported folder with `edit` applied to deploy.json and the manifest recomputed
    (as whoever can edit deploy.json could)."""
    folder = tmp_path / "exported"
    shutil.copytree(run_dir / "exported", folder)
    spec = json.loads((folder / "deploy.json").read_text())
    edit(spec)
    (folder / "deploy.json").write_text(json.dumps(spec))
    write_manifest(folder)
    return folder


EDITS = {
    "feed above the hard bound": (
        lambda s: s["safety"].update(max_feed_m_s=0.02),
        r"safety.max_feed_m_s: expected a finite number in \(0, 0.01\] m/s",
    ),
    "feed above the task's": (
        lambda s: s["safety"].update(max_feed_m_s=0.008),
        r"safety.max_feed_m_s: expected a limit of at most 0.006",
    ),
    "no feed limit": (lambda s: s["safety"].pop("max_feed_m_s"), "safety.max_feed_m_s: expected a limit"),
    "thrust 50 N": (lambda s: s["safety"].update(max_thrust_n=50.0), r"safety.max_thrust_n: expected .* \(0, 30\] N"),
    "no thrust limit": (lambda s: s["safety"].pop("max_thrust_n"), "safety.max_thrust_n: expected a limit"),
    "reports without thrust": (
        lambda s: s["robot"]["reports"]["signals"].pop("thrust_n"),
        "robot.reports: expected",
    ),
    "feed scale doubled": (lambda s: s["action"]["scale"].__setitem__(5, 0.0024), r"action.scale: expected"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_hand_edited_drill_limit_is_refused_naming_the_field(run_dir, tmp_path, case):
    edit, match = EDITS[case]
    folder = edited(run_dir, tmp_path, edit)
    with pytest.raises(InputError, match=match):
        Runtime(folder, "onnx")


def test_network_bridge_on_loopback_matches_the_direct_run(run_dir):
    runtime = Runtime(run_dir / "exported", "torchscript")
    direct = runtime.run_episode(sim_drill_robot(run_dir, 7), max_steps=12)
    robot = NetworkRobot("127.0.0.1", 0)
    served: dict = {}
    limits = SafetyLimits.from_dict(runtime.spec["safety"])  # the robot PC's own limits, the drill's among them
    pc = threading.Thread(
        target=lambda: served.update(
            serve_robot(sim_drill_robot(run_dir, 7), "127.0.0.1", robot.port, limits, runtime.dt)
        )
    )
    pc.start()
    try:
        bridged = runtime.run_episode(robot, max_steps=12)
    finally:
        robot.close()
        pc.join(timeout=60)
    assert served == {"targets": 12, "status": "closed"} and bridged.status == direct.status == "max_steps"
    a, b = direct.arrays(), bridged.arrays()
    for key in ("poses", "q", "actions", "input/policy"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def drill_start(patients) -> tuple[Session, RobotState]:
    """A real session and first state of the simulated drill robot."""
    robot = SimDrillRobot(make_env({"name": "us_surgery_state"}, patients, 1, seed=2))
    return robot.start(), robot.read()


def bridged_state(state: RobotState) -> RobotState:
    """`state` sent by a robot PC and read by the runtime's side of the bridge."""
    a, b = socket.socketpair()
    runtime, robot_pc = Channel(a, "runtime", 1.0), Channel(b, "robot_pc", 1.0)
    network = NetworkRobot("127.0.0.1", 0)
    network.channel = runtime  # the runtime's end of an established connection
    try:
        runtime.send("target", arrays={"pose": np.asarray(state.probe_pose, np.float32)})
        robot_pc.receive(("target",))
        _send_state(robot_pc, state, robot_pc.received - 1)
        return network.read()
    finally:
        network.server.close()
        a.close()
        b.close()


def test_the_bridge_round_trips_and_checks_the_drill_state(drill_start):
    session, state = drill_start
    got = bridged_state(state)
    assert sorted(got.tools) == ["probe"] and got.signals == state.signals and len(got.signals) == 3
    np.testing.assert_array_equal(got.tools["probe"], state.tools["probe"])
    np.testing.assert_array_equal(got.probe_pose, state.probe_pose)
    reports = Reports.from_spec({"reports": {"tool_poses": {"probe": ""}, "signals": {"thrust_n": {"range": [0, 30]}}}})
    for changes, match in [
        ({"signals": {**state.signals, "thrust_n": float("nan")}}, r"signals\['thrust_n'\]"),
        ({"signals": {**state.signals, "Thrust!": 1.0}}, "signals name"),
        ({"tools": {"probe": state.tools["probe"] * 2}}, r"tools\['probe'\] quaternion"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            bridged_state(replace(state, **changes))
    with pytest.raises(InputError, match=r"signals\['in_bone'\]: expected a number"):
        check_state(replace(state, signals={**state.signals, "in_bone": True}))
    with pytest.raises(InputError, match=r"robot state signals: expected exactly \['thrust_n'\]"):
        check_state(state, 7, reports)  # the policy's reports name exactly what the robot must send
    with pytest.raises(InputError, match=r"signals\['thrust_n'\]: expected a number in \[0, 30\]"):
        check_state(replace(state, signals={"thrust_n": 31.0}), 7, reports)
    arrays = session.to_arrays()
    again = Session.from_arrays(arrays)
    assert sorted(again.task) == ["plan_entry_m", "plan_radius_m", "plan_target_m"]
    np.testing.assert_array_equal(again.task["plan_entry_m"], session.task["plan_entry_m"])
    with pytest.raises(InputError, match="session task/plan_entry_m: expected finite values"):
        Session.from_arrays({**arrays, "task/plan_entry_m": np.full(3, np.nan)})


def test_the_robot_pc_bounds_the_feed_not_the_depth_of_a_drill(drill_start):
    session, state = drill_start
    limits = replace(LIMITS, workspace_low_m=(-0.2, -0.2, -0.2), workspace_high_m=(0.2, 0.2, 0.2))
    start = np.asarray(state.probe_pose, np.float64)
    bit = quat_to_matrix(torch.tensor(start[None, 3:]))[0, :, 2].numpy()
    fine = np.concatenate([start[:3] + 0.001 * bit, start[3:]])
    drill = RobotGuard(replace(limits, max_feed_m_s=0.006, max_thrust_n=20.0), 0.2, session, start)
    assert drill.target(fine)[1] is None  # below the skin (the drill starts in the tissue), within the feed
    fast = np.concatenate([fine[:3] + 0.003 * bit, start[3:]])
    assert "along the bit: above 6.0 mm/s" in drill.target(fast)[1]
    probe = RobotGuard(limits, 0.2, session, start)  # a probe robot's guard keeps its depth limit
    assert "below the skin" in probe.target(fine)[1]


def test_ros2_refuses_a_drill_policy_by_name(run_dir, tmp_path):
    from policies.deploy.ros2 import Ros2Robot

    reports = Reports.from_spec(json.loads((run_dir / "exported" / "deploy.json").read_text())["robot"])
    with pytest.raises(InputError, match=r"deploy.robot=ros2: this policy's robot reports tool poses \['probe'\]"):
        Ros2Robot(tmp_path / "session.npz", ["a"], reports=reports)
