"""us_surgery on a robot: what an exported policy expects (deploy.json) and the robot-side controller.

The robot the policy commands is the drill arm; its tool pose is the drill tip (tool frame
`drill_tip`, z along the bit, into the body), its contact force the drill's thrust. Beyond every
robot's state (`policies.deploy.robot.RobotState`) it reports (deploy.json robot.reports) the
tracked pose of the ultrasound probe held by the second arm (tools["probe"]: the plan and the
drill are observed in the probe's frame) and three signals: thrust_n, drilled_depth_m and
in_bone. The robot reports in_bone and the depth rather than the controller inferring them from
the thrust: its drilling unit sees the bit engage at its own sensor rate (thrust and feed), while
the policy's 5 Hz samples would see the entry late, and at no feed (no thrust) not at all; in the
simulator they are the drilling model's own. An episode's session carries the screw plan as task
arrays (plan_entry_m, plan_target_m (3,) in the task frame, plan_radius_m) in place of us_nav's
goal.

`Controller` is the task's robot-side twin: the policy's inputs come from these readings through
the environment's own observation terms (`tasks.us_surgery.mdp.observations`), and an action
becomes a drill target through its drill-motion terms (`tasks.us_surgery.mdp.drill_motion`).
The target is what the action asks for, with the full commanded feed: the robot side has no
tissue model, so the bone, not the controller, slows the bit and holds the shaft (the simulated
robot drills by the task's physics, `UsSurgeryEnv.drive_tools`, which turns the target back into
the action), and the safety limits bound the feed (max_feed_m_s) and stop the robot on thrust
(max_thrust_n).

Where deploy.json's task.config.shield is enabled (as trained, or as deploy.shield sets it), the
controller projects each action into the plan's corridor first, by the environment's own shield
(`tasks.us_surgery.mdp.shield`), and counts the actions it changed (report["shield_interventions"]).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Mapping

import numpy as np
import torch

from policies.deploy.inputs import batch_row, policy_frame
from policies.deploy.robot import MAX_FORCE_N, RobotState, robot_description, task_frame
from policies.deploy.sim_robot import SimRobot
from sim.config import build
from sim.errors import require
from sim.robot.safety import THRUST_N, THRUST_SIGNAL, ExportSettings, SafetyLimits, limits_for_steps
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp
from tasks.us_surgery.config import UsSurgeryCfg
from tasks.us_surgery.env import DRILL, DRILL_ARM, PROBE
from tasks.us_surgery.mdp import drill_motion, observations, shield
from tasks.us_surgery.spaces import ACTION_NAMES, observation_spaces

DEPTH_SIGNAL, IN_BONE_SIGNAL = "drilled_depth_m", "in_bone"
PLAN_ARRAYS = {"plan_entry_m": (3,), "plan_target_m": (3,), "plan_radius_m": ()}  # the session's task arrays
MAX_PLAN_RADIUS_M = 0.01  # a pedicle screw's radius: 6.5-7.5 mm screws (REFERENCE §7); 1 cm is a wrong plan
MIN_PLAN_LENGTH_M = 1e-3  # a shorter plan has no axis

# How each segment of the "policy" input is computed (names: `tasks.us_surgery.spaces`).
COMPUTE = {
    "plan_target_in_drill": "(target - drill tip) in the drill frame / {p} m; target from the session, tip tracked",
    "plan_entry_in_drill": "(entry - drill tip) in the drill frame / {p} m",
    "plan_axis_in_drill": "the plan's unit axis (entry to target) in the drill frame",
    "drill_tip_in_probe": "(drill tip - probe) in the probe frame / {p} m, both tracked",
    "drill_axis_in_probe": "the drill's z axis (along the bit) in the probe frame",
    "drilled_depth": "signal drilled_depth_m / {p} m: depth drilled from where the bit entered bone, 0 before",
    "thrust": "signal thrust_n / {f} N",
    "in_bone": "signal in_bone: 1 once the bit has entered bone this episode, else 0",
    "drill_joint_positions": "2 (q - lower) / (upper - lower) - 1, robot.joints order",
    "last_action": "the previous step's action after clamping, 0 at episode start",
}


def observation_layout(cfg: UsSurgeryCfg, dof: int) -> list[dict]:
    """The segments of the "policy" input vector, in order: name, size and how it is computed (the
    names and sizes are the environment's declared policy space, so the two cannot drift apart)."""
    o = cfg.observation
    segments = observation_spaces(cfg, dof)["policy"].segments
    return [
        {"name": s.name, "size": s.size, "compute": COMPUTE[s.name].format(p=o.position_scale_m, f=o.force_scale_n)}
        for s in segments
    ]


def reports(cfg: UsSurgeryCfg) -> dict:
    """deploy.json robot.reports: what the drill robot reports beyond every robot's state."""
    return {
        "tool_poses": {PROBE: "the ultrasound probe's tracked pose (its probe_tip frame, z along the beam)"},
        "signals": {
            THRUST_SIGNAL: {"unit": "N", "range": [0.0, MAX_FORCE_N], "meaning": "drill thrust along the bit"},
            DEPTH_SIGNAL: {
                "unit": "m",
                "range": [0.0, cfg.drill.length_m],
                "meaning": "depth drilled from where the bit entered bone this episode, 0 before",
            },
            IN_BONE_SIGNAL: {"unit": "1", "range": [0.0, 1.0], "meaning": "1 once the bit has entered bone, else 0"},
        },
    }


def deploy_contract(config: Mapping, what: str = "deploy.json task.config") -> dict:
    """What deploy.json's "control", "action" and robot.reports must say for the task config
    `config` (a mapping of `UsSurgeryCfg`; InputError naming `what` if it is not one), and the drill
    limits its safety must have ("safety": {limit: at most}): the controller moves the drill by
    task.config's actions, so the action description is derived from it. The feed action is given
    in metres per step: its most, the drill's max feed for one period (the tissue sets the actual feed)."""
    cfg = build(UsSurgeryCfg, config, what)
    a, feed = cfg.actions, cfg.drill.max_feed_m_s
    return {
        "control": {"rate_hz": cfg.control_hz, "dt_s": 1.0 / cfg.control_hz, "episode_steps": cfg.episode_steps},
        "action": {
            "shape": ["batch", len(ACTION_NAMES)],
            "names": list(ACTION_NAMES),
            "units": ["m", "m", "m", "rad", "rad", "m"],
            "scale": [a.translation_m, a.translation_m, a.translation_m, a.tilt_rad, a.tilt_rad, feed / cfg.control_hz],
            "clamp": [-1.0, 1.0],
            "meaning": (
                "per control step: translation of the drill tip along the drill frame's x, y, z (the vector clipped "
                "to translation_m; in bone only across the bit, the channel re-aimed from where the bit entered), "
                "tilt about the drill's x and y (about the tip, in bone about the entry), and feed: max(0, action) "
                "of max_feed_m_s along the bit; the bone slows the feed and holds the shaft"
            ),
            "limits": {
                "translation_m": a.translation_m,
                "tilt_rad": a.tilt_rad,
                "max_feed_m_s": feed,
                "drill_length_m": cfg.drill.length_m,
            },
        },
        "reports": reports(cfg),
        "safety": {"max_feed_m_s": feed, "max_thrust_n": THRUST_N.high},
    }


def safety_limits(env, settings: ExportSettings) -> SafetyLimits:
    """The limits for `env`'s task from the export settings: targets may move speed_margin times
    faster than one full action step per period (translation and feed at once; rotation: both
    tilts at once); the robot stops at twice that speed, never above the hard bound of the speed
    limits; the feed limit is the drill's max feed (the action's most, so a target never advances
    faster than the policy was trained to command); the thrust limit is export.max_thrust_n; the
    box is the plans' corridor (`workspace_box`) widened by workspace_margin_m. InputError naming
    export.speed_margin if the speeds leave their bounds."""
    cfg = env.cfg
    a, hz = cfg.actions, cfg.control_hz
    step_m, step_rad = a.translation_m + cfg.drill.max_feed_m_s / hz, math.hypot(a.tilt_rad, a.tilt_rad)
    box = workspace_box(env, settings.workspace_margin_m)
    return limits_for_steps(
        settings, step_m, step_rad, hz, box, max_feed_m_s=cfg.drill.max_feed_m_s, max_thrust_n=settings.max_thrust_n
    )


def workspace_box(env, margin_m: float) -> tuple[list[float], list[float]]:
    """(low, high) of the drill tip's box in the anchor frame, metres: every plan's corridor in the
    environment's patients, from the episode start on its axis (standoff_m before the entry) to its
    target, widened by the start's offset across the axis and by margin_m."""
    plans, s = env.plans, env.cfg.start
    anchor = env.scene.anchor[:, None]  # (P, 1, 3): each patient's anchor point
    start = plans.entry - plans.axis * s.standoff_m - anchor
    points = torch.cat([start, plans.target - anchor], 1).reshape(-1, 3)
    widen = s.offset_m + margin_m
    return (points.min(0).values - widen).tolist(), (points.max(0).values + widen).tolist()


def deployment_spec(env, settings: ExportSettings) -> dict:
    """deploy.json's task part for a `UsSurgeryEnv`: task, control, observation, action, robot (the
    drill arm, with what it reports) and safety (`safety_limits` from the checked export settings)."""
    cfg: UsSurgeryCfg = env.cfg
    arm, o = env.drill_arm, cfg.observation
    width = int(env.get_observations()["policy"].shape[1])
    inputs = [
        {"name": "policy", "dtype": "float32", "shape": ["batch", width], "layout": observation_layout(cfg, arm.dof)}
    ]
    if o.images:
        inputs.append(
            {
                "name": "image",
                "dtype": "float32",
                "shape": ["batch", o.history, o.image_size, o.image_size],
                "channels": [f"ultrasound frame t-{k}" for k in range(o.history)],
                "compute": "B-mode frames in [0, 1] of the tracked probe, the drill in them (row 0 at the probe face, "
                f"column 0 at probe -x) resized to {o.image_size} x {o.image_size} px (area averaging); newest first; "
                "at episode start the first frame fills the history",
            }
        )
    task_config = asdict(cfg)
    contract = deploy_contract(task_config, "task")
    return {
        "task": {"name": cfg.name, "config": task_config},
        "control": contract["control"],
        "task_frame": task_frame(cfg.anchor),
        "observation": {"inputs": inputs},
        "action": contract["action"],
        "robot": {
            **robot_description(arm, cfg.drill_arm.base_position_m, cfg.drill_arm.base_quat_wxyz),
            "reports": contract["reports"],
        },
        "safety": safety_limits(env, settings).to_dict(),
    }


class Controller:
    """One drill robot under a us_surgery policy (batch of one), in the robot's task frame.

    spec: deploy.json. Per episode `start(session, state)`; per control step `observe(state)`
    (after the first), `inputs(state)` for the policy and `target(action)` for the drill arm.
    report: the episode's counts, updated in place: shield_interventions, the actions the shield
    changed (0 without it).
    """

    def __init__(self, spec: Mapping) -> None:
        self.cfg = build(UsSurgeryCfg, spec["task"]["config"], "deploy.json task.config")
        shield.check_cfg(self.cfg.shield, self.cfg.start, "deploy.json task.config.shield")
        self.report = {"shield_interventions": 0}
        joints = spec["robot"]["joints"]
        self.lower = torch.tensor([j["lower_rad"] for j in joints], dtype=torch.float64).float()
        self.upper = torch.tensor([j["upper_rad"] for j in joints], dtype=torch.float64).float()

    def start(self, session, state: RobotState) -> None:
        """A new episode: the plan from `session` (`policies.deploy.robot.Session`: its task arrays
        PLAN_ARRAYS; InputError naming the array that is missing or wrong). The screw's radius is
        checked but is no input of the policy (the task observes none)."""
        for name, shape in PLAN_ARRAYS.items():
            value = session.task.get(name)
            got = None if value is None else np.shape(value)
            require(got == shape, f"session task array {name!r}", f"shape {shape} (the screw plan)", got)
        self.plan_entry, self.plan_target = (
            batch_row(session.task["plan_entry_m"]),
            batch_row(session.task["plan_target_m"]),
        )
        radius = float(session.task["plan_radius_m"])
        require(
            0 < radius <= MAX_PLAN_RADIUS_M, "session plan_radius_m", f"a radius in (0, {MAX_PLAN_RADIUS_M}] m", radius
        )
        axis = self.plan_target - self.plan_entry  # as the environment's plan table computes it
        length = axis.norm(dim=-1)
        require(
            MIN_PLAN_LENGTH_M <= float(length) <= self.cfg.drill.length_m,
            "session plan", f"entry and target {MIN_PLAN_LENGTH_M} m to the drill's length apart", float(length),
        )  # fmt: skip
        self.plan_axis = axis / length[..., None]
        self.last_action = torch.zeros(1, len(ACTION_NAMES))
        self.report["shield_interventions"] = 0
        self.reading: tuple | None = None  # the drill's tip, axes, in-bone state and depth of the last inputs
        if self.cfg.observation.images:
            self.history = (
                policy_frame(state, self.cfg.observation.image_size)
                .expand(-1, self.cfg.observation.history, -1, -1)
                .clone()
            )

    def observe(self, state: RobotState) -> None:
        """After a control step: take the new ultrasound frame."""
        if self.cfg.observation.images:
            self.history = torch.cat([policy_frame(state, self.cfg.observation.image_size), self.history[:, :-1]], 1)

    def inputs(self, state: RobotState) -> dict[str, np.ndarray]:
        """The policy's inputs {name: (1, ...) float32} for the robot's state now (its readings are
        the tracked poses: the tracker's noise is in them, none is added here)."""
        o = self.cfg.observation
        require(PROBE in state.tools, "robot state tools", f"the tracked {PROBE!r} pose", sorted(state.tools))
        pose = batch_row(state.probe_pose)
        rot = quat_to_matrix(pose[:, 3:])
        true = observations.Frames(pose[:, :3], rot, self.plan_entry, self.plan_target, self.plan_axis)
        seen = observations.in_probe_frame(batch_row(state.tools[PROBE]), true)
        signal = lambda name: torch.tensor([state.signals[name]], dtype=torch.float32)  # noqa: E731
        depth, in_bone = signal(DEPTH_SIGNAL), signal(IN_BONE_SIGNAL)
        drilling = observations.drilling_state(
            depth, signal(THRUST_SIGNAL), in_bone, batch_row(state.q), self.lower, self.upper, self.last_action, o
        )
        self.reading = (pose[:, :3], rot, in_bone > 0.5, depth)
        groups = {"policy": observations.policy_vector(seen, drilling, o.position_scale_m)}
        if o.images:
            groups["image"] = self.history.clone()
        return {k: v.numpy() for k, v in groups.items()}

    def target(self, action: np.ndarray) -> np.ndarray:
        """The drill target pose (7,) for a finite action (A,), clamped to [-1, 1], from the drill's
        reading of the last `inputs`: what the action asks for by the drill-motion terms, the tip
        translated (in bone only across the bit: there only drilling advances it) and the drill
        tilted about it, then the commanded feed along the tilted bit. How much of that the bone
        lets happen (its hold on the shaft, which turns a push into a pivot about the channel's
        entry, and the feed it allows) is the bone's: in the simulator the task's own physics
        (`UsSurgeryEnv.drive_tools`), which moves the drill toward this target as the action would.
        With the shield on, the action is first projected into the plan's corridor (as the
        environment's) and the last action is the projected one."""
        require(self.reading is not None, "drill controller", "inputs(state) before target(action)", "no reading")
        cfg = self.cfg
        act = torch.as_tensor(np.asarray(action, np.float32)).reshape(1, -1).clamp(-1.0, 1.0)
        tip, rot, in_bone, depth = self.reading
        if cfg.shield.enabled:
            act, intervened = shield.project(
                act, tip, rot, in_bone, depth, self.plan_entry, self.plan_target, self.plan_axis,
                cfg.actions, cfg.drill.max_feed_m_s / cfg.control_hz, cfg.shield,
            )  # fmt: skip
            self.report["shield_interventions"] += int(intervened[0])
        world, tilt = drill_motion.commanded_motion(act, cfg.actions, rot)
        world = torch.where(in_bone[:, None], drill_motion.across_bit(world, rot[:, :, 2]), world)
        rot = rot @ rotation_exp(tilt)
        feed = drill_motion.feed_command(act) * (cfg.drill.max_feed_m_s / cfg.control_hz)
        self.last_action = act
        return torch.cat([tip + world + rot[:, :, 2] * feed[:, None], matrix_to_quat(rot)], -1)[0].numpy()


class SimDrillRobot(SimRobot):
    """The simulator as us_surgery's drill robot (`policies.deploy.sim_robot.SimRobot`): targets drive
    the drill (by the task's physics, `UsSurgeryEnv.drive_tools`; the probe arm holds its view), and
    its state is the drill arm's joints, the drill's pose as the drilling model has it (where the bit
    is; the arm's flange follows it within its tracking error), the thrust as the drill's force, the
    probe's pose and the drill's signals. Its tracker is exact: the task's registration and tracking
    noise belong to a real navigation system's readings. Through the soft tissue it follows play.py's
    path but for rounding; in bone the paths part: the channel's re-aim at a shallow depth
    (`drill_motion.move`) turns the drill by tens of degrees in one step, and the runtime's angular
    speed limit holds the next target back from such a turn."""

    tool = DRILL

    @classmethod
    def reading(cls, snapshot, done: bool = False) -> RobotState:
        extras = snapshot.extras
        frame = snapshot.image[0].cpu().numpy() if snapshot.image is not None else None
        signals = {
            THRUST_SIGNAL: float(extras["thrust_n"][0]),
            DEPTH_SIGNAL: float(extras["channel_depth_m"][0]),
            IN_BONE_SIGNAL: float(extras["in_bone"][0]),
        }
        return RobotState(
            snapshot.joint_positions[DRILL_ARM][0].cpu().numpy(),
            extras["drill_command"][0].cpu().numpy(),
            float(snapshot.tool_forces[DRILL][0]),
            frame,
            done,
            {PROBE: snapshot.tool_poses[PROBE][0].cpu().numpy()},
            signals,
        )
