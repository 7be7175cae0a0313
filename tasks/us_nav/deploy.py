"""us_nav on a robot: what an exported policy expects (deploy.json) and the robot-side controller.

`deployment_spec` describes the observation layout, the action's meaning and the robot for
deploy.json; `deploy_contract` is what its control and action parts must be for a task config
(deploy.json's schema checks a loaded file against it). `Controller` is the task's robot-side
twin: it builds the policy's inputs from robot signals (joint angles, probe pose, contact force,
ultrasound frames) with the same observation terms the environment uses, and turns actions into
Cartesian probe targets with the same probe-motion terms, so a policy sees on the robot exactly
what it saw in training.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Mapping

import numpy as np
import torch

from policies.deploy.inputs import batch_row, policy_frame
from policies.deploy.robot import robot_description, task_frame
from sim.anatomy.patient import SkinSurface
from sim.config import build
from sim.errors import require
from sim.robot.contact import SkinBank
from sim.robot.safety import ExportSettings, SafetyLimits, limits_for_steps
from sim.transforms import clamp_norm
from sim.ultrasound.placement import skin_state_from_pose
from tasks.us_nav.config import UsNavCfg
from tasks.us_nav.mdp import actions, observations
from tasks.us_nav.spaces import ACTION_NAMES, ACTION_UNITS


def observation_layout(cfg: UsNavCfg) -> list[dict]:
    """The segments of the "policy" input vector, in order: name, size and how it is computed."""
    o, a = cfg.observation, cfg.actions
    relative = [
        {
            "name": "goal_position_in_probe",
            "size": 3,
            "compute": f"(goal - probe) position, probe frame, / {o.position_scale_m} m",
        },
        {
            "name": "goal_rotation_in_probe",
            "size": 3,
            "compute": f"rotation vector of R_probe^T R_goal / {o.angle_scale_rad} rad",
        },
    ]
    proprio = [
        {"name": "yaw_sin", "size": 1, "compute": "sin of the commanded yaw about the beam"},
        {"name": "yaw_cos", "size": 1, "compute": "cos of the commanded yaw"},
        {"name": "tilt", "size": 2, "compute": f"commanded tilt (about probe x, y) / {a.max_tilt_rad} rad"},
        {"name": "contact_force", "size": 1, "compute": f"probe contact force / {cfg.reward.max_force_n} N"},
        {
            "name": "last_action",
            "size": len(ACTION_NAMES),
            "compute": "the previous step's action after clamping, 0 at episode start",
        },
    ]
    return proprio if o.images else relative + proprio


# The deepest a target may be pressed into the skin: 10 mm (the quasi-static contact gives about
# 4 N at the default 2 mm; a deeper press is a wrong file, not a scanning style).
MAX_PRESS_M = 0.01


def deploy_contract(config: Mapping, what: str = "deploy.json task.config") -> dict:
    """What deploy.json's "control" and "action" must say for the task config `config` (a
    mapping of `UsNavCfg`; InputError naming `what` if it is not one): the robot-side controller
    moves the probe by task.config's actions, so the action description must be derived from it."""
    cfg = build(UsNavCfg, config, what)
    a = cfg.actions
    require(0.0 <= a.press_m <= MAX_PRESS_M, f"{what}.actions.press_m", f"a depth in [0, {MAX_PRESS_M}] m", a.press_m)
    return {
        "control": {"rate_hz": cfg.control_hz, "dt_s": 1.0 / cfg.control_hz, "episode_steps": cfg.episode_steps},
        "action": {
            "shape": ["batch", len(ACTION_NAMES)],
            "names": list(ACTION_NAMES),
            "units": list(ACTION_UNITS),
            "scale": [a.translation_m, a.translation_m, a.yaw_rad, a.tilt_rad, a.tilt_rad],
            "clamp": [-1.0, 1.0],
            "meaning": (
                "increments of the commanded probe state per control step: translation along the untilted probe's "
                "x (lateral) and y (elevation) axes projected on the skin (task x-z plane), rotation about the beam, "
                "tilt about the probe's x and y axes; the target is the skin point below the commanded (x, z), "
                "pressed press_m in"
            ),
            "limits": {
                "workspace_half_extent_m": list(cfg.workspace_half_extent_m),
                "yaw_range_rad": list(a.yaw_range_rad),
                "max_tilt_rad": a.max_tilt_rad,
                "press_m": a.press_m,
                "lag_steps": a.lag_steps,
            },
        },
    }


def safety_limits(env, settings: ExportSettings) -> SafetyLimits:
    """The limits for `env`'s task from the export settings: targets may move speed_margin times
    faster than one full action step per period (translation: both axes at once; rotation: yaw
    and both tilts at once); the robot stops at twice that speed, never above the hard bound of
    the speed limits; the box is the task's workspace and skin height range widened by
    workspace_margin_m. InputError naming export.speed_margin if the speeds leave their bounds."""
    cfg = env.cfg
    a = cfg.actions
    step_m, step_rad = math.hypot(a.translation_m, a.translation_m), math.hypot(a.yaw_rad, a.tilt_rad, a.tilt_rad)
    box = workspace_box(env, settings.workspace_margin_m)
    return limits_for_steps(settings, step_m, step_rad, cfg.control_hz, box)


def deployment_spec(env, settings: ExportSettings) -> dict:
    """deploy.json's task part for a `UsNavEnv`: task, control, observation, action, robot and
    safety (`safety_limits` from the checked export settings)."""
    cfg: UsNavCfg = env.cfg
    arm, o = env.arm, cfg.observation
    width = int(env.get_observations()["policy"].shape[1])
    inputs = [{"name": "policy", "dtype": "float32", "shape": ["batch", width], "layout": observation_layout(cfg)}]
    if o.images:
        inputs.append(
            {
                "name": "image",
                "dtype": "float32",
                "shape": ["batch", o.history + 1, o.image_size, o.planes * o.image_size],
                "channels": [*[f"ultrasound frame t-{k}" for k in range(o.history)], "goal image"],
                "compute": "B-mode frames in [0, 1] (row 0 at the probe face, column 0 at probe -x) resized to "
                f"{o.image_size} x {o.planes * o.image_size} px (area averaging); newest first; "
                "at episode start the first frame fills the history"
                + (
                    "; biplane: the image plane, then beside it the plane turned +90 deg about the beam "
                    "(column 0 at probe -y), each plane square"
                    if o.planes == 2
                    else ""
                ),
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
        "robot": robot_description(arm, cfg.robot.base_position_m, cfg.robot.base_quat_wxyz),
        "safety": safety_limits(env, settings).to_dict(),
    }


def workspace_box(env, margin_m: float) -> tuple[list[float], list[float]]:
    """(low, high) of the probe's workspace box in the anchor frame, metres: the task's (x, z)
    extent and the skin's height range over it in the environment's patients, +- margin_m."""
    skin, dev = env.scene.skin, env.device
    ex, ez = env.cfg.workspace_half_extent_m
    grid = torch.stack(
        torch.meshgrid(torch.linspace(-ex, ex, 41, device=dev), torch.linspace(-ez, ez, 81, device=dev), indexing="ij"),
        -1,
    ).reshape(-1, 2)
    p = len(env.patients)
    patient = torch.arange(p, device=dev).repeat_interleave(len(grid))
    xz = grid.repeat(p, 1) + env.anchor_xz[patient]
    point, _ = skin.query(patient, xz[:, 0], xz[:, 1])
    height = (point[:, 1] - env.scene.anchor[patient, 1])[torch.isfinite(point[:, 1])]
    require(len(height) > 0, "workspace box", "skin under the task workspace in at least one patient", "no skin point")
    return [-ex - margin_m, float(height.min()) - margin_m, -ez - margin_m], [
        ex + margin_m,
        float(height.max()) + margin_m,
        ez + margin_m,
    ]


class Controller:
    """One robot's probe under a us_nav policy (batch of one), in the robot's task frame.

    spec: deploy.json. Per episode `start(session, state)`; per control step `observe(state)`
    (after the first), `inputs(state)` for the policy and `target(action)` for the arm.
    """

    def __init__(self, spec: Mapping) -> None:
        self.cfg = build(UsNavCfg, spec["task"]["config"], "deploy.json task.config")

    def start(self, session, state) -> None:
        """A new episode: the skin surface, anchor and goal from `session` (`policies.deploy.robot.Session`),
        the commanded probe state from the session or, when it has none, from the measured pose.
        InputError unless the session has the goal this policy needs (a pose, or an image of its size)."""
        cfg = self.cfg
        if cfg.observation.images:
            size = (cfg.observation.image_size, cfg.observation.planes * cfg.observation.image_size)
            got = None if session.goal_image is None else session.goal_image.shape
            require(got == size, "session goal_image", f"an image of shape {size} for this image policy", got)
        else:
            require(session.goal_pose is not None, "session goal_pose", "a goal pose (7,) for a state policy", None)
        surface = SkinSurface(*(session.surface[k] for k in ("x0", "z0", "dx", "dz", "y", "normal")))
        self.skin = SkinBank.from_surfaces([surface])
        self.patient = torch.zeros(1, dtype=torch.long)
        self.anchor = batch_row(session.anchor_m)
        anchor_xz = self.anchor[:, [0, 2]]
        extent = torch.tensor(cfg.workspace_half_extent_m)
        self.box_low, self.box_high = anchor_xz - extent, anchor_xz + extent
        pose = batch_row(state.probe_pose)
        if session.start_command is not None:
            xz, yaw, tilt = session.start_command
            self.command = (batch_row(xz), torch.as_tensor(np.float32(yaw)).reshape(1), batch_row(tilt))
        else:
            _, normal = self.skin.query(self.patient, pose[:, 0], pose[:, 2])
            yaw, tilt = skin_state_from_pose(pose, normal)
            self.command = (
                pose[:, [0, 2]],
                yaw.clamp(*cfg.actions.yaw_range_rad),
                clamp_norm(tilt, cfg.actions.max_tilt_rad),
            )
        self.goal_pose = None if session.goal_pose is None else batch_row(session.goal_pose)
        self.goal_image = None if session.goal_image is None else batch_row(session.goal_image)
        self.last_action = torch.zeros(1, len(ACTION_NAMES))
        self.pending: tuple | None = None
        if cfg.observation.images:
            self.history = self.frame(state).expand(-1, cfg.observation.history, -1, -1).clone()

    def observe(self, state) -> None:
        """After a control step: keep the commanded state only if the arm kept up with the last
        target (as the environment does), and take the new ultrasound frame."""
        if self.pending is not None:
            old, new, target = self.pending
            self.command = actions.settle(
                actions.lagging(target, batch_row(state.probe_pose), self.cfg.actions), old, new
            )
            self.pending = None
        if self.cfg.observation.images:
            self.history = torch.cat([self.frame(state), self.history[:, :-1]], 1)

    def frame(self, state) -> torch.Tensor:
        """(1, 1, S, planes * S): the robot's newest frame as the policy sees it."""
        o = self.cfg.observation
        return policy_frame(state, o.image_size, o.planes)

    def inputs(self, state) -> dict[str, np.ndarray]:
        """The policy's inputs {name: (1, ...) float32} for the robot's state now."""
        cfg, o = self.cfg, self.cfg.observation
        pose = batch_row(state.probe_pose)
        _, yaw, tilt = self.command
        force = torch.tensor([float(state.force_n)], dtype=torch.float32)
        proprio = observations.proprioception(cfg, yaw, tilt, force, self.last_action)
        relative = None
        if not o.images:
            relative = observations.relative_goal_pose(pose, self.goal_pose, o.position_scale_m, o.angle_scale_rad)
        groups = observations.actor_groups(cfg, proprio, relative, getattr(self, "history", None), self.goal_image)
        return {k: v.numpy() for k, v in groups.items()}

    def target(self, action: np.ndarray) -> np.ndarray:
        """The probe target pose (7,) for a finite action (A,), clamped to [-1, 1]."""
        cfg = self.cfg.actions
        act = torch.as_tensor(np.asarray(action, np.float32)).reshape(1, -1).clamp(-1.0, 1.0)
        old = self.command
        new = actions.move_probe(act, cfg, *old, self.skin, self.patient, self.box_low, self.box_high)
        target = actions.skin_targets(self.skin, self.patient, *new, cfg.press_m)
        self.pending = (old, new, target)
        self.last_action = act
        return target[0].numpy()
