"""`UsSurgeryEnv`: a robot drills a pedicle-screw pilot hole while a second robot holds the ultrasound probe.

Per environment: a patient, a goal (a screw plan: lumbar level x side, `sim.anatomy.plans`), the
probe arm holding the probe in an in-plane view of the planned path, and the drill arm holding the
drill. Each step moves the commanded drill by the action (free in soft tissue, held by bone once
in it), feeds the bit by the tissue it cuts (`sim.surgery.drilling`), grades the drilled channel's
breaches (`sim.surgery.breach`), lets both arms follow their targets and renders the ultrasound
image with the drill in it (`sim.ultrasound.tools`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from tensordict import TensorDict

from sim.anatomy.bank import PatientBank
from sim.anatomy.landmarks import LUMBAR
from sim.anatomy.patient import Patient
from sim.backends import make_scene
from sim.backends.protocol import SceneBackend
from sim.backends.scene import SceneCfg, SceneRobotCfg, ToolCfg
from sim.config import build
from sim.envs.base import BatchedEnv
from sim.envs.snapshot import EnvSnapshot
from sim.envs.terms import weighted
from sim.errors import require, require_number
from sim.surgery.breach import DIRECTIONS, GRADES, ChannelBreach, grade
from sim.surgery.distance import StructureDistance
from sim.surgery.drilling import Drill
from sim.transforms import check_poses, matrix_to_quat, quat_to_matrix, rotation_exp, rotation_log
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import RendererConfig, step_and_reset_renderers
from sim.ultrasound.tools import ToolSegments
from tasks.us_surgery.config import ArmCfg, UsSurgeryCfg
from tasks.us_surgery.mdp import drill_motion, goals, observations, rewards, shield, terminations
from tasks.us_surgery.mdp.probe_hold import hold_pose
from tasks.us_surgery.spaces import action_space, observation_spaces

PROBE_ARM, DRILL_ARM = "probe_arm", "drill_arm"
PROBE, DRILL = "probe", "drill"
CANAL = ("spinal_canal", "spinal_cord")  # the canal where labelled, else the cord (TotalSegmentator)
SHAFT_M = 0.15  # the drill seen in the image: the bit and chuck back to the flange (URDF drill_tip offset)


def _robot(name: str, arm: ArmCfg, tool: ToolCfg) -> SceneRobotCfg:
    return SceneRobotCfg(
        name, arm.robot, arm.tool_frame, arm.base_position_m, arm.base_quat_wxyz, tool,
        substeps=arm.substeps, damping=arm.damping, reset_ik_iterations=arm.reset_ik_iterations,
    )  # fmt: skip


class UsSurgeryEnv(BatchedEnv):
    """Ultrasound-guided pedicle drilling over N environments (see `UsSurgeryCfg` for units).

    Observation groups: "policy" (N, D) the tracked plan and drill (probe frame, with registration and
    tracking noise) and the drill's state, "image" (N, history, S, S) the ultrasound history when images
    are on, "critic" (N, Dc) the true plan errors and breach state. Actions (N, 6) in [-1, 1]
    (`ActionCfg`), projected into the plan's corridor where the shield is on (`ShieldCfg`). Reward terms:
    `RewardCfg`; costs: {"breach_mm": mm}; spaces: `tasks.us_surgery.spaces`.
    """

    num_actions = 6
    config_class = UsSurgeryCfg
    cost_units = {"breach_mm": "mm"}

    def __init__(
        self,
        cfg: UsSurgeryCfg | Mapping | None,
        patients: Sequence[Patient],
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        probe: str | Mapping | ProbeSpec = "linear",
        backend: str | Mapping | SceneBackend = "torch",
    ) -> None:
        super().__init__(num_envs, device, seed)
        self._configure(cfg, patients)
        cfg, dev = self.cfg, self.device
        self.goal_names = goals.goal_names(cfg.goal.levels, cfg.goal.sides)
        self.plans = goals.plan_table(self.patients, cfg.goal.levels, cfg.goal.sides, LUMBAR, dev)
        self.scene = make_scene(backend, self.patients, self.scene_cfg(cfg), num_envs, dev)
        self.probe_arm, self.drill_arm = self.scene.arms[PROBE_ARM], self.scene.arms[DRILL_ARM]
        self._check_drill(cfg)
        self.drill = Drill(self.patients, cfg.drill, dev)
        self.breach = ChannelBreach(self.patients, dev, max_length_m=cfg.drill.length_m)
        self.canal = StructureDistance(self.patients, CANAL, dev)
        sides = [1.0 if g.endswith("/right") else -1.0 for g in self.goal_names]
        self.side_sign = torch.tensor(sides, device=dev)
        # The probe hold's draws: uniform in [0, 1] (across) and [-1, 1] (elevation); made once, so a
        # reset copies nothing from the host (a sync on CUDA).
        self._draw_span, self._draw_low = torch.tensor([1.0, 2.0], device=dev), torch.tensor([0.0, 1.0], device=dev)
        t = cfg.tracking
        self._registration_std = torch.tensor([t.registration_m] * 3 + [t.registration_rad] * 3, device=dev)
        self._tracking_std = torch.tensor([t.tracking_m] * 3 + [t.tracking_rad] * 3, device=dev)
        self._fail_grade = terminations.grade_index(cfg.success.fail_grade)
        self._max_grade = terminations.grade_index(cfg.success.max_grade)
        self._up = torch.tensor([0.0, 0.0, 1.0], device=dev)  # the drill frame's x reference: superior
        n = num_envs
        zeros = lambda *shape: torch.zeros(n, *shape, device=dev)  # noqa: E731
        self.patient_idx = torch.zeros(n, dtype=torch.long, device=dev)
        self.goal_idx = torch.zeros(n, dtype=torch.long, device=dev)
        home = self.scene.home(n)
        self.q_probe, self.q_drill = home[PROBE_ARM], home[DRILL_ARM]
        self.probe_target, self.probe_pose, self.drill_pose = zeros(7), zeros(7), zeros(7)
        self.force = zeros()
        self.tip, self.quat = zeros(3), zeros(4)
        self.entered = torch.zeros(n, dtype=torch.bool, device=dev)
        self.entry, self.depth, self.lateral, self.thrust = zeros(3), zeros(), torch.ones(n, device=dev), zeros()
        self.tip_err, self.ang_err, self.depth_err = zeros(), zeros(), zeros()
        self.worst_mm, self.worst_depth_m = zeros(), zeros()
        self.worst_dir = torch.zeros(n, dtype=torch.long, device=dev)
        self.in_canal = torch.zeros(n, dtype=torch.bool, device=dev)
        self.registration, self.noise = zeros(6), zeros(6)
        self.action, self.last_action = zeros(self.num_actions), zeros(self.num_actions)
        self.new_breach_mm = zeros()
        self.shield_interventions = torch.zeros(n, dtype=torch.long, device=dev)  # this episode's, `ShieldCfg`
        names = [
            "patient_idx", "goal_idx", "q_probe", "q_drill", "probe_target", "probe_pose", "drill_pose", "force",
            "tip", "quat", "entered", "entry", "depth", "lateral", "thrust", "tip_err", "ang_err", "depth_err",
            "worst_mm", "worst_depth_m", "worst_dir", "in_canal", "registration", "noise", "action", "last_action",
        ]  # fmt: skip
        if cfg.shield.enabled:
            names.append("shield_interventions")
        self.probe = ProbeSpec.policy_probe(probe, cfg.observation.image_size)
        self.renderer = None
        if cfg.observation.images:
            self._init_imaging()
            names.append("history")
        self.state_names = tuple(names)
        self.reward_terms = rewards.reward_terms(cfg.reward)
        self.observation_spaces = observation_spaces(cfg, self.drill_arm.dof)
        self.action_space = action_space(cfg)
        self.reset()

    @staticmethod
    def scene_cfg(cfg: UsSurgeryCfg) -> SceneCfg:
        """Two arms: "probe_arm" (`task.probe_arm`) holding the ultrasound probe "probe", and
        "drill_arm" (`task.drill_arm`) holding the drill "drill"."""
        probe = ToolCfg(PROBE, "probe", {"stiffness_n_per_m": cfg.skin_stiffness_n_per_m})
        return SceneCfg(
            (_robot(PROBE_ARM, cfg.probe_arm, probe), _robot(DRILL_ARM, cfg.drill_arm, ToolCfg(DRILL, "drill"))),
            anchor=cfg.anchor,
        )

    @staticmethod
    def _check_cfg(cfg: UsSurgeryCfg) -> None:
        require(cfg.episode_steps >= 1, "task.episode_steps", "a positive number of steps", cfg.episode_steps)
        require_number(cfg.control_hz, "task.control_hz", 0.0, 1000.0, low_open=True)
        require(len(cfg.goal.levels) > 0 and len(cfg.goal.sides) > 0, "task.goal", "a level and a side", cfg.goal)
        bad = [s for s in cfg.goal.sides if s not in ("left", "right")]
        require(not bad, "task.goal.sides", "'left' and/or 'right'", list(cfg.goal.sides))
        for key in ("translation_m", "tilt_rad"):
            require_number(getattr(cfg.actions, key), f"task.actions.{key}", 0.0)
        for key in ("standoff_m", "offset_m", "tilt_rad"):
            require_number(getattr(cfg.start, key), f"task.start.{key}", 0.0)
        for key in ("registration_m", "registration_rad", "tracking_m", "tracking_rad"):
            require_number(getattr(cfg.tracking, key), f"task.tracking.{key}", 0.0)
        require_number(cfg.success.tip_m, "task.success.tip_m", 0.0, low_open=True)
        require_number(cfg.success.angle_rad, "task.success.angle_rad", 0.0, math.pi, low_open=True)
        for key in ("max_grade", "fail_grade"):
            require(
                getattr(cfg.success, key) in GRADES,
                f"task.success.{key}",
                f"one of {list(GRADES)}",
                getattr(cfg.success, key),
            )
        require(
            GRADES.index(cfg.success.fail_grade) > GRADES.index(cfg.success.max_grade),
            "task.success.fail_grade",
            f"a grade worse than max_grade {cfg.success.max_grade!r}",
            cfg.success.fail_grade,
        )
        require(cfg.observation.history >= 1, "task.observation.history", "at least 1 frame", cfg.observation.history)
        require(
            8 <= cfg.observation.image_size <= 512,
            "task.observation.image_size",
            "8..512 pixels",
            cfg.observation.image_size,
        )
        shield.check_cfg(cfg.shield, cfg.start)

    def _check_drill(self, cfg: UsSurgeryCfg) -> None:
        """InputError unless the drill can drill every plan from its start and the drill arm reaches it."""
        longest = float(self.plans.length_m.max()) + cfg.start.standoff_m
        require(
            cfg.drill.length_m >= longest,
            "task.drill.length_m",
            f"at least the longest planned channel plus the start standoff, {longest * 1000:.0f} mm",
            f"{cfg.drill.length_m * 1000:.0f} mm",
        )
        base = self.scene.base_poses(torch.arange(len(self.patients), device=self.device))[DRILL_ARM][:, None, :3]
        # The farthest the drill must reach: a plan's target with the bit drilled in to its full length.
        far = self.plans.entry + self.plans.axis * cfg.drill.length_m
        farthest = float((far - base).norm(dim=-1).max())
        reach = self.drill_arm.reach_m
        require(
            farthest <= reach,
            "task.drill.length_m",
            f"a drill whose tip stays within the drill arm's reach ({self.drill_arm.name}: {reach:.2f} m)",
            f"{cfg.drill.length_m * 1000:.0f} mm, putting the tip {farthest:.2f} m from the base",
        )

    def _init_imaging(self) -> None:
        cfg, dev = self.cfg, self.device
        self.bank = PatientBank(self.patients, dev)
        render_cfg = build(RendererConfig, cfg.renderer, "task.renderer")
        self.renderer, self.reset_renderer = step_and_reset_renderers(self.bank, self.probe, render_cfg)
        size = cfg.observation.image_size
        self.history = torch.zeros(self.num_envs, cfg.observation.history, size, size, device=dev)

    # -- the current plan

    def plan(self, ids: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(entry, target, unit axis) (M, 3) each of the plans of environments ids, patient frame."""
        p, g = self.patient_idx[ids], self.goal_idx[ids]
        return self.plans.entry[p, g], self.plans.target[p, g], self.plans.axis[p, g]

    def _in_bone(self, points: torch.Tensor) -> torch.Tensor:
        """(N,) bool: points (N, 3) lie in bone (the drill's material model)."""
        return self.drill.material(points[:, None], self.patient_idx).bone[:, 0] > 0.5

    def tools(self, tip: torch.Tensor, quat: torch.Tensor) -> ToolSegments:
        """The drill shaft of drills with tips (M, 3) and orientations (M, 4): what the image shows."""
        z = quat_to_matrix(quat)[:, :, 2]
        return ToolSegments(tip - z * SHAFT_M, tip, self.cfg.drill.radius_m)

    def toward(self, target: torch.Tensor) -> torch.Tensor:
        """Actions (N, 6) in [-1, 1] moving the drill toward target poses (N, 7) in one step, as far as
        the per-step bounds allow: the lateral offset (drill frame x, y) as translation, the axial one
        as feed (the bit advances along its axis by drilling, in any tissue), the rotation about x, y
        as tilt."""
        cfg = self.cfg
        rot = quat_to_matrix(self.quat)
        offset = (rot.transpose(-1, -2) @ (target[:, :3] - self.tip)[:, :, None])[:, :, 0]
        turn = rotation_log(rot.transpose(-1, -2) @ quat_to_matrix(target[:, 3:]))
        feed = offset[:, 2:] / (cfg.drill.max_feed_m_s * self.dt)
        action = torch.cat(
            [
                offset[:, :2] / cfg.actions.translation_m,
                torch.zeros_like(feed),
                turn[:, :2] / cfg.actions.tilt_rad,
                feed,
            ],
            -1,
        )
        return action.clamp(-1.0, 1.0)

    # -- hooks

    def _apply_action(self, action: torch.Tensor) -> None:
        """The policy's action, projected into the plan's corridor where the shield is on (`ShieldCfg`,
        its interventions counted), moves the drill."""
        cfg = self.cfg
        if cfg.shield.enabled:
            entry, target, axis = self.plan()
            action, intervened = shield.project(
                action, self.tip, quat_to_matrix(self.quat), self.entered, self.depth, entry, target, axis,
                cfg.actions, cfg.drill.max_feed_m_s * self.dt, cfg.shield,
            )  # fmt: skip
            self.shield_interventions = self.shield_interventions + intervened
        self._move_drill(action)

    def _move_drill(self, action: torch.Tensor) -> None:
        """The drill moved by action (N, 6) (`drill_motion`, `sim.surgery.drilling`), both arms following;
        self.action becomes it."""
        cfg = self.cfg
        rot = quat_to_matrix(self.quat)
        tip, rot, depth = drill_motion.move(
            action, cfg.actions, self.tip, rot, self.entered, self.entry, self.depth, self.lateral, self._in_bone
        )
        z = rot[:, :, 2]
        entry = torch.where(self.entered[:, None], self.entry, tip)
        step = self.drill.step(entry, z, depth, drill_motion.feed_command(action), self.patient_idx, self.dt)
        # The bit is in bone once its point cuts anything slower than soft tissue.
        self.entered = self.entered | (step.feed_fraction < cfg.drill.feed_soft * (1 - 1e-3))
        self.entry = entry
        self.depth = torch.where(self.entered, step.depth_m, torch.zeros_like(depth))
        self.tip = entry + z * step.depth_m[:, None]
        self.quat = matrix_to_quat(rot)
        self.lateral, self.thrust = step.lateral, step.thrust_n
        self.noise = torch.randn(self.num_envs, 6, generator=self.generator, device=self.device) * self._tracking_std
        self.drive(self.probe_target, torch.cat([self.tip, self.quat], -1))
        self.action = action

    def drive(self, probe_target: torch.Tensor, drill_target: torch.Tensor) -> None:
        """One control step of both arms toward their tool targets (N, 7), patient frame: joint angles,
        tool poses, the probe's contact force and (with images) the ultrasound history follow."""
        q = self.scene.follow(
            {PROBE_ARM: self.q_probe, DRILL_ARM: self.q_drill}, self.patient_idx,
            {PROBE: probe_target, DRILL: drill_target}, self.dt,
        )  # fmt: skip
        self.q_probe, self.q_drill = q[PROBE_ARM], q[DRILL_ARM]
        poses = self.scene.tool_poses(q, self.patient_idx)
        self.probe_pose, self.drill_pose = poses[PROBE], poses[DRILL]
        self.force = self.scene.contacts(self.patient_idx, {PROBE: self.probe_pose})[PROBE].force_n
        if self.renderer is not None:
            tools = self.tools(self.tip, self.quat)
            image = self.renderer.render(self.probe_pose, self.patient_idx, None, check=False, tools=tools)
            self.history = torch.cat([image[:, None], self.history[:, :-1]], 1)

    def _channel_breach(self):
        """The drilled channel's breach now (`sim.surgery.breach.Breach`)."""
        z = quat_to_matrix(self.quat)[:, :, 2]
        level = self.plans.level[self.goal_idx]
        return self.breach(self.entry, z, self.depth, self.cfg.drill.radius_m, self.patient_idx, level)

    def _evaluate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        entry, target, axis = self.plan()
        z = quat_to_matrix(self.quat)[:, :, 2]
        tip_err, ang_err, depth_err = terminations.plan_errors(self.tip, z, entry, target, axis)
        breach = self._channel_breach()
        worst_mm = torch.maximum(self.worst_mm, breach.weighted_mm)
        self.new_breach_mm = rewards.new_breach(self.worst_mm, worst_mm)
        deeper = breach.depth_m > self.worst_depth_m
        self.worst_dir = torch.where(deeper, breach.direction, self.worst_dir)
        self.worst_depth_m = torch.maximum(self.worst_depth_m, breach.depth_m)
        self.worst_mm = worst_mm
        worst_grade = grade(self.worst_depth_m * 1000.0, self.breach.edges)
        canal = self.canal.distance(self.tip[:, None], self.patient_idx)[:, 0]
        self.in_canal = self.in_canal | (canal < cfg.drill.radius_m)
        stopped = self.entered & (drill_motion.feed_command(self.action) <= 0)
        success = terminations.succeeded(
            tip_err, ang_err, worst_grade, stopped, cfg.success.tip_m, cfg.success.angle_rad, self._max_grade
        )
        failure = terminations.failed(worst_grade, self.in_canal, self._fail_grade) & ~success
        outcome = rewards.StepOutcome(
            self.tip_err, tip_err, self.ang_err, ang_err, success, failure, self.new_breach_mm,
            self.action, self.last_action, self.last_action_excess,
        )  # fmt: skip
        reward = weighted(self.reward_terms, outcome)
        self.tip_err, self.ang_err, self.depth_err = tip_err, ang_err, depth_err
        self.last_action = self.action
        breached = self.worst_depth_m > 0
        metrics = {
            "success": success,
            "failure": failure,
            "grade": worst_grade.float(),
            "breach_mm": self.worst_depth_m * 1000.0,
            "medial_breach": breached & (self.worst_dir == DIRECTIONS.index("medial")),
            "direction": torch.where(breached, self.worst_dir, -1).float(),
            "in_canal": self.in_canal,
            "tip_err_mm": tip_err * 1000.0,
            "angle_err_deg": torch.rad2deg(ang_err),
            "depth_err_mm": depth_err.abs() * 1000.0,
            "steps": self.episode_length_buf.clone(),
            "shield_interventions": self.shield_interventions.float(),
        }
        return reward, success | failure, metrics

    def _costs(self) -> dict[str, torch.Tensor]:
        """{"breach_mm": (N,) mm the episode's worst weighted breach grew this step}."""
        return {"breach_mm": self.new_breach_mm}

    def _start_pose(self, entry: torch.Tensor, axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drill tips (M, 3) and orientations (M, 3, 3) at the episode start (`StartCfg`), random draws."""
        s, gen, dev, m = self.cfg.start, self.generator, self.device, len(entry)
        u = torch.linalg.cross(axis, self._up.expand_as(axis))
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        v = torch.linalg.cross(axis, u)
        phi = 2 * math.pi * torch.rand(m, generator=gen, device=dev)
        across = phi.cos()[:, None] * u + phi.sin()[:, None] * v
        tip = entry - axis * s.standoff_m + across * (s.offset_m * torch.rand(m, 1, generator=gen, device=dev))
        # The drill frame: z along the plan's axis, x toward superior (across it), then a random tilt.
        x = torch.linalg.cross(u, axis)
        rot = torch.stack([x, torch.linalg.cross(axis, x), axis], -1)
        psi = 2 * math.pi * torch.rand(m, generator=gen, device=dev)
        tilt = torch.stack([psi.cos(), psi.sin(), torch.zeros_like(psi)], -1)
        tilt = tilt * (s.tilt_rad * torch.rand(m, 1, generator=gen, device=dev))
        return tip, rot @ rotation_exp(tilt)

    def _reset_idx(self, ids: torch.Tensor) -> None:
        cfg, gen, dev, m = self.cfg, self.generator, self.device, len(ids)
        patient = self.scene.patients_for(ids, torch.randint(len(self.patients), (m,), generator=gen, device=dev))
        goal = torch.randint(len(self.goal_names), (m,), generator=gen, device=dev)
        self.patient_idx[ids], self.goal_idx[ids] = patient, goal
        entry, target, axis = self.plan(ids)
        tip, rot = self._start_pose(entry, axis)
        quat = matrix_to_quat(rot)
        self.tip[ids], self.quat[ids], self.entry[ids] = tip, quat, tip
        self.entered[ids] = False
        self.depth[ids], self.lateral[ids], self.thrust[ids] = 0.0, 1.0, 0.0
        draws = torch.rand(m, 2, generator=gen, device=dev) * self._draw_span - self._draw_low
        probe_target = hold_pose(
            self.scene.skin, patient, entry, axis, self.side_sign[goal], self.probe.face_half_width_m,
            cfg.probe_hold, draws,
        )  # fmt: skip
        drill_target = torch.cat([tip, quat], -1)
        # The arms start from where they are (their last episode's end), as real arms would.
        q = self.scene.place(
            {PROBE_ARM: self.q_probe[ids], DRILL_ARM: self.q_drill[ids]}, patient,
            {PROBE: probe_target, DRILL: drill_target}, ids,
        )  # fmt: skip
        poses = self.scene.tool_poses(q, patient)
        self.q_probe[ids], self.q_drill[ids] = q[PROBE_ARM], q[DRILL_ARM]
        self.probe_target[ids], self.probe_pose[ids], self.drill_pose[ids] = probe_target, poses[PROBE], poses[DRILL]
        self.force[ids] = self.scene.contacts(patient, {PROBE: poses[PROBE]}, ids)[PROBE].force_n
        tip_err, ang_err, depth_err = terminations.plan_errors(tip, rot[:, :, 2], entry, target, axis)
        self.tip_err[ids], self.ang_err[ids], self.depth_err[ids] = tip_err, ang_err, depth_err
        self.worst_mm[ids], self.worst_depth_m[ids], self.worst_dir[ids] = 0.0, 0.0, 0
        self.in_canal[ids] = False
        self.registration[ids] = torch.randn(m, 6, generator=gen, device=dev) * self._registration_std
        self.noise[ids] = 0.0
        self.action[ids], self.last_action[ids] = 0.0, 0.0
        self.shield_interventions[ids] = 0
        if self.renderer is not None:
            image = self.reset_renderer.render(poses[PROBE], patient, None, check=False, tools=self.tools(tip, quat))
            self.history[ids] = image[:, None].expand(-1, cfg.observation.history, -1, -1)

    def _frames(self) -> observations.Frames:
        entry, target, axis = self.plan()
        return observations.Frames(self.tip, quat_to_matrix(self.quat), entry, target, axis)

    def get_observations(self) -> TensorDict:
        o = self.cfg.observation
        true = self._frames()
        seen = observations.tracked(observations.in_probe_frame(self.probe_pose, true), self.registration, self.noise)
        lower, upper = self.drill_arm.lower.float(), self.drill_arm.upper.float()
        drilling = observations.drilling_state(
            self.depth, self.thrust, self.entered, self.q_drill, lower, upper, self.last_action, o
        )
        groups = {"policy": observations.policy_vector(seen, drilling, o.position_scale_m)}
        if self.renderer is not None:
            groups["image"] = self.history.clone()  # a copy: loading a state rewrites the history in place
        privileged = torch.stack(
            [
                self.tip_err / o.position_scale_m,
                self.ang_err,
                self.depth_err / o.position_scale_m,
                self.lateral,
                self.worst_mm / 10.0,
                self.episode_length_buf.float() / self.cfg.episode_steps,
            ],
            -1,
        )
        groups["critic"] = torch.cat([observations.plan_in_drill(true, o.position_scale_m), drilling, privileged], -1)
        return TensorDict(groups, batch_size=[self.num_envs], device=self.device)

    # -- the contract of generic tools (sim.envs.snapshot)

    def snapshot(self, env_ids: torch.Tensor | None = None) -> EnvSnapshot:
        """Environments env_ids (None: all) now: the probe (first tool) and the drill, held by their arms,
        and the newest image; extras: goal_name (list of M), plan entry and target (M, 3), screw radius
        (M,), the drilled channel's entry (M, 3), depth (M,) and in_bone (M,) bool, the drill's commanded
        pose (M, 7), tip_error_m, angle_error_rad, worst breach_mm and its grade index (M,) into GRADES."""
        ids = (
            torch.arange(self.num_envs, device=self.device)
            if env_ids is None
            else torch.as_tensor(env_ids, device=self.device)
        )
        patient, goal = self.patient_idx[ids], self.goal_idx[ids]
        entry, target, _ = self.plan(ids)
        extras = {
            "goal_name": [self.goal_names[g] for g in goal.tolist()],
            "plan_entry": entry,
            "plan_target": target,
            "plan_radius_m": self.plans.radius_m[patient, goal],
            "channel_entry": self.entry[ids],
            "channel_depth_m": self.depth[ids],
            "in_bone": self.entered[ids],
            "drill_command": torch.cat([self.tip[ids], self.quat[ids]], -1),
            "tip_error_m": self.tip_err[ids],
            "angle_error_rad": self.ang_err[ids],
            "breach_mm": self.worst_depth_m[ids] * 1000.0,
            "grade": grade(self.worst_depth_m[ids] * 1000.0, self.breach.edges),
            "thrust_n": self.thrust[ids],
        }
        return EnvSnapshot(
            env_ids=ids,
            patient=patient,
            step=self.episode_length_buf[ids],
            tool_poses={PROBE: self.probe_pose[ids], DRILL: self.drill_pose[ids]},
            tool_forces={PROBE: self.force[ids], DRILL: self.thrust[ids]},
            joint_positions={PROBE_ARM: self.q_probe[ids], DRILL_ARM: self.q_drill[ids]},
            base_poses=self.scene.base_poses(patient),
            goal_pose=None,
            image=self.history[ids, 0] if self.renderer is not None else None,
            imaged_tools=self.tools(self.tip[ids], self.quat[ids]),
            extras=extras,
        )

    @torch.inference_mode()
    def drive_tools(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One control step of both arms toward tool targets {"probe": (N, 7) and/or "drill": (N, 7)} (see
        `BatchedEnv.drive_tools`; a missing tool holds its current target). The probe arm takes its
        target as its hold; the drill is moved by the task's own physics toward its target, as the
        action `toward` it would move it (the bone holds the bit, the tissue sets the feed), so an
        external controller drills no faster than a policy (and no shield holds it: that is the
        controller's, `tasks.us_surgery.deploy.Controller`); the task's success and failure tests are
        its own."""
        got = {k: tuple(v.shape) for k, v in targets.items()}
        ok = set(targets) <= {PROBE, DRILL} and all(tuple(v.shape) == (self.num_envs, 7) for v in targets.values())
        require(ok and len(targets) > 0, "tool targets", f"{{'probe' and/or 'drill': ({self.num_envs}, 7) poses}}", got)
        for pose in targets.values():
            check_poses(pose)  # outside data
        if PROBE in targets:
            self.probe_target = targets[PROBE].to(self.device, torch.float32)
        drill = targets.get(DRILL)
        action = torch.zeros(self.num_envs, self.num_actions, device=self.device)
        if drill is not None:
            action = self.toward(drill.to(self.device, torch.float32))
        self._move_drill(action)
        self.episode_length_buf += 1
        _, terminated, _ = self._evaluate()
        return terminated | (self.episode_length_buf >= self.max_episode_length)
