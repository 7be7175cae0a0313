"""`UsNavEnv`: a robot-held probe navigates to a requested standard plane of the lumbar spine.

Per environment: a patient from the bank, a goal (lumbar level x view), the commanded probe
state on the skin, the arm's joint angles and the probe pose they reach. Each step moves the
commanded probe state by the action, the arm follows through DLS IK (so the probe lags what it
cannot reach), contact and the ultrasound image come from the pose the arm actually reached.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from tensordict import TensorDict

from sim.anatomy.bank import PatientBank
from sim.anatomy.patient import Patient
from sim.backends import make_scene
from sim.backends.protocol import SceneBackend
from sim.backends.scene import SceneCfg, SceneRobotCfg
from sim.config import build
from sim.envs.base import BatchedEnv
from sim.envs.snapshot import EnvSnapshot
from sim.envs.terms import weighted
from sim.errors import InputError, require, require_choice, require_number
from sim.transforms import check_poses
from sim.ultrasound.biplane import PLANE_COUNTS, plane_params, plane_poses, side_by_side
from sim.ultrasound.placement import skin_state_from_pose
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import RendererConfig, RenderParams, step_and_reset_renderers
from tasks.us_nav.config import UsNavCfg
from tasks.us_nav.mdp import actions, goals, observations, rewards, terminations
from tasks.us_nav.spaces import action_space, observation_spaces

RENDER_PARAM_NAMES = ("gain_db", "dynamic_range_db", "frequency_mhz", "tissue", "speckle_offset")
START_CENTRES = ("anchor", "goal")  # what task.start.around may name
ARM, PROBE = "probe_arm", "probe"  # the scene's one robot and the tool it holds


def wrap_into(angle: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Angles (rad) moved by whole turns into [low, high] (a range shorter than a turn); one that
    fits nowhere goes to the nearer end, measured around the circle."""
    wrapped = low + torch.remainder(angle - low, 2 * math.pi)
    nearer = torch.where(wrapped - high < low + 2 * math.pi - wrapped, high, low)
    return torch.where(wrapped > high, nearer, wrapped)


class UsNavEnv(BatchedEnv):
    """Goal-conditioned probe navigation over N environments (see `UsNavCfg` for units).

    Observation groups: "policy" (N, D) for the actor (proprioception, plus the relative goal
    pose when cfg.observation.images is False), "image" (N, history + 1, S, S) ultrasound
    history and goal image when images are on, "critic" (N, Dc) privileged state.
    Actions (N, 5) in [-1, 1], see `ActionCfg`. Reward terms, costs and their units: `RewardCfg`;
    declared spaces: `tasks.us_nav.spaces`.
    """

    num_actions = 5
    config_class = UsNavCfg
    cost_units = {"contact_force": "N"}

    def __init__(
        self,
        cfg: UsNavCfg | Mapping | None,
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
        self.scene = make_scene(backend, self.patients, self.scene_cfg(cfg), num_envs, dev)
        self.arm = self.scene.arms[ARM]
        self.goal_names = goals.goal_names(cfg.goal.levels, cfg.goal.views)
        missing = [(p.name, lv) for p in self.patients for lv in cfg.goal.levels if lv not in p.landmarks]
        if missing:
            raise InputError(f"task goal levels: patients lack landmarks {missing}")
        self.goal_poses = goals.goal_pose_table(
            self.patients, self.scene.skin, cfg.goal.levels, cfg.goal.views, cfg.actions.press_m,
            cfg.actions.max_tilt_rad,
        )  # fmt: skip
        anchor_xz = self.scene.anchor[:, [0, 2]]
        extent = torch.tensor(cfg.workspace_half_extent_m, device=dev)
        self.box_low, self.box_high = anchor_xz - extent, anchor_xz + extent
        # Made once: a reset copies nothing from the host (a sync on CUDA).
        self.start_half_extent = torch.tensor(cfg.start.half_extent_m, device=dev)
        self.anchor_xz = anchor_xz
        self.goal_xz = self.goal_poses[..., [0, 2]]  # (P, G)
        _, goal_normal = self.scene.skin.query(
            torch.arange(len(self.patients), device=dev).repeat_interleave(self.goal_poses.shape[1]),
            self.goal_xz[..., 0].flatten(), self.goal_xz[..., 1].flatten(),
        )  # fmt: skip
        goal_yaw, _ = skin_state_from_pose(self.goal_poses.reshape(-1, 7), goal_normal)
        self.goal_yaw = goal_yaw.reshape(self.goal_xz.shape[:2])  # (P, G) about the beam, rad
        n = num_envs
        self.patient_idx = torch.zeros(n, dtype=torch.long, device=dev)
        self.goal_idx = torch.zeros(n, dtype=torch.long, device=dev)
        self.xz = anchor_xz[self.patient_idx].clone()
        self.yaw = torch.zeros(n, device=dev)
        self.tilt = torch.zeros(n, 2, device=dev)
        self.q = self.scene.home(n)[ARM]
        self.poses = torch.zeros(n, 7, device=dev)
        self.force = torch.zeros(n, device=dev)
        self.peak_force = torch.zeros(n, device=dev)  # this episode's highest contact force, N
        self.action = torch.zeros(n, self.num_actions, device=dev)
        self.last_action = torch.zeros(n, self.num_actions, device=dev)
        self.pos_err = torch.zeros(n, device=dev)
        self.ang_err = torch.zeros(n, device=dev)
        self.hold = torch.zeros(n, dtype=torch.long, device=dev)
        self.start_error = torch.zeros(n, 2, device=dev)  # each episode's start: position error, head-foot offset; m
        names = [
            "patient_idx",
            "goal_idx",
            "xz",
            "yaw",
            "tilt",
            "q",
            "poses",
            "force",
            "peak_force",
            "action",
            "last_action",
            "pos_err",
            "ang_err",
            "hold",
            "start_error",
        ]
        self.renderer = None
        if cfg.observation.images:
            self._init_imaging(probe)
            names += ["history", "goal_image"]
            if cfg.observation.randomize_imaging:
                names += [f"render_{k}" for k in RENDER_PARAM_NAMES]
        self.state_names = tuple(names)
        self.reward_terms = rewards.reward_terms(cfg.reward)
        self.observation_spaces = observation_spaces(cfg, self.arm.dof)
        self.action_space = action_space(cfg)
        self.reset()

    @staticmethod
    def scene_cfg(cfg: UsNavCfg) -> SceneCfg:
        """One arm ("probe_arm", `task.robot`) holding the ultrasound probe ("probe")."""
        return SceneCfg((SceneRobotCfg.from_robot_cfg(ARM, cfg.robot),), anchor=cfg.anchor)

    @staticmethod
    def _check_cfg(cfg: UsNavCfg) -> None:
        require(cfg.episode_steps >= 1, "task.episode_steps", "a positive number of steps", cfg.episode_steps)
        require(cfg.control_hz > 0, "task.control_hz", "a positive rate in Hz", cfg.control_hz)
        require(
            len(cfg.goal.levels) > 0 and len(cfg.goal.views) > 0,
            "task.goal",
            "at least one level and one view",
            cfg.goal,
        )
        require(cfg.success.hold_steps >= 1, "task.success.hold_steps", "at least 1", cfg.success.hold_steps)
        require(cfg.observation.history >= 1, "task.observation.history", "at least 1 frame", cfg.observation.history)
        require(
            8 <= cfg.observation.image_size <= 512,
            "task.observation.image_size",
            "8..512 pixels",
            cfg.observation.image_size,
        )
        for key in ("translation_m", "yaw_rad", "tilt_rad", "max_tilt_rad"):
            value = getattr(cfg.actions, key)
            require(math.isfinite(value) and value >= 0, f"task.actions.{key}", "a finite non-negative bound", value)
        require_number(cfg.reward.max_force_n, "task.reward.max_force_n", 0.0, low_open=True)
        require_choice(cfg.start.around, "task.start.around", START_CENTRES)
        planes = cfg.observation.planes
        require(planes in PLANE_COUNTS, "task.observation.planes", "1 (the image plane) or 2 (biplane)", planes)

    def _init_imaging(self, probe: str | Mapping | ProbeSpec) -> None:
        cfg, dev = self.cfg, self.device
        self.bank = PatientBank(self.patients, dev)
        self.probe = ProbeSpec.policy_probe(probe, cfg.observation.image_size)
        render_cfg = build(RendererConfig, cfg.renderer, "task.renderer")
        self.renderer, self.reset_renderer = step_and_reset_renderers(self.bank, self.probe, render_cfg)
        size, width = cfg.observation.image_size, cfg.observation.image_size * cfg.observation.planes
        self.history = torch.zeros(self.num_envs, cfg.observation.history, size, width, device=dev)
        # The goal image is state, rendered at each reset: with randomised imaging it has its
        # own draw (gain, tissue, speckle), so the policy cannot find the goal by matching pixels.
        self.goal_image = torch.zeros(self.num_envs, size, width, device=dev)
        if cfg.observation.randomize_imaging:
            params = self.renderer.default_params(self.num_envs)
            params.speckle_offset = torch.zeros(self.num_envs, 3, device=dev)  # every reset draws its own
            for k in RENDER_PARAM_NAMES:
                setattr(self, f"render_{k}", getattr(params, k).clone())

    def render_params(self, ids: torch.Tensor | None = None) -> RenderParams | None:
        """The imaging parameters of environments ids (None: all) this episode, as the current
        image is rendered with; None without randomised imaging (the renderer's nominal ones)."""
        if not self.cfg.observation.randomize_imaging:
            return None
        sel = slice(None) if ids is None else ids
        return RenderParams(**{k: getattr(self, f"render_{k}")[sel] for k in RENDER_PARAM_NAMES})

    # -- the current goal

    @property
    def goal_pose(self) -> torch.Tensor:
        """(N, 7) goal probe poses, patient frame."""
        return self.goal_poses[self.patient_idx, self.goal_idx]

    # -- hooks

    def _apply_action(self, action: torch.Tensor) -> None:
        cfg = self.cfg.actions
        command = actions.move_probe(
            action, cfg, self.xz, self.yaw, self.tilt, self.scene.skin, self.patient_idx,
            self.box_low[self.patient_idx], self.box_high[self.patient_idx],
        )  # fmt: skip
        targets = actions.skin_targets(self.scene.skin, self.patient_idx, *command, cfg.press_m)
        self.drive(targets)
        lag = actions.lagging(targets, self.poses, cfg)
        self.xz, self.yaw, self.tilt = actions.settle(lag, (self.xz, self.yaw, self.tilt), command)
        self.action = action

    def drive(self, targets: torch.Tensor) -> None:
        """One control step of the arm toward probe targets (N, 7), patient frame: joint angles,
        probe poses, contact force and (with images) the ultrasound history follow. The path of
        both the task's actions and an external controller (`policies.deploy.sim_robot`)."""
        self.q = self.scene.follow({ARM: self.q}, self.patient_idx, {PROBE: targets}, self.dt)[ARM]
        self.poses = self.scene.tool_poses({ARM: self.q}, self.patient_idx)[PROBE]
        self.force = self.scene.contacts(self.patient_idx, {PROBE: self.poses})[PROBE].force_n
        if self.renderer is not None:
            image = self.image(self.renderer, self.poses, self.patient_idx, self.render_params(None))
            self.history = torch.cat([image[:, None], self.history[:, :-1]], 1)

    def _evaluate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        pos_err, ang_err = terminations.pose_errors(self.poses, self.goal_pose)
        within = terminations.within_tolerance(pos_err, ang_err, cfg.success.position_m, cfg.success.angle_rad)
        self.hold = terminations.update_hold(self.hold, within)
        success = self.hold >= cfg.success.hold_steps
        outcome = rewards.StepOutcome(
            self.pos_err,
            pos_err,
            self.ang_err,
            ang_err,
            success,
            rewards.excess_force(self.force, cfg.reward.max_force_n),
            self.action,
            self.last_action,
            self.last_action_excess,
        )
        reward = weighted(self.reward_terms, outcome)
        self.pos_err, self.ang_err = pos_err, ang_err
        self.last_action = self.action
        self.peak_force = torch.maximum(self.peak_force, self.force)
        metrics = {
            "success": success,
            "position_error_mm": pos_err * 1000.0,
            "angle_error_deg": torch.rad2deg(ang_err),
            "steps": self.episode_length_buf.clone(),
            "force_n": self.force,
            "peak_force_n": self.peak_force,
            "start_position_error_mm": self.start_error[:, 0] * 1000.0,
            "start_head_foot_mm": self.start_error[:, 1] * 1000.0,
        }
        return reward, success, metrics

    def _costs(self) -> dict[str, torch.Tensor]:
        """{"contact_force": (N,) newtons of probe contact force above task.reward.max_force_n}."""
        return {"contact_force": rewards.excess_force(self.force, self.cfg.reward.max_force_n)}

    def _reset_idx(self, ids: torch.Tensor) -> None:
        cfg, gen, dev, m = self.cfg, self.generator, self.device, len(ids)
        patient = self.scene.patients_for(ids, torch.randint(len(self.patients), (m,), generator=gen, device=dev))
        self.patient_idx[ids] = patient
        self.goal_idx[ids] = torch.randint(len(self.goal_names), (m,), generator=gen, device=dev)
        xz, yaw = self._start_xz_yaw(patient, self.goal_idx[ids])
        tilt = torch.zeros(m, 2, device=dev)
        self.xz[ids], self.yaw[ids], self.tilt[ids] = xz, yaw, tilt
        targets = actions.skin_targets(self.scene.skin, patient, xz, yaw, tilt, cfg.actions.press_m)
        # The arm starts from where it is (its last episode's end), as a real arm would.
        q = self.scene.place({ARM: self.q[ids]}, patient, {PROBE: targets}, ids)[ARM]
        poses = self.scene.tool_poses({ARM: q}, patient)[PROBE]
        self.q[ids], self.poses[ids] = q, poses
        self.force[ids] = self.scene.contacts(patient, {PROBE: poses}, ids)[PROBE].force_n
        self.peak_force[ids] = self.force[ids]
        pos_err, ang_err = terminations.pose_errors(poses, self.goal_poses[patient, self.goal_idx[ids]])
        self.pos_err[ids], self.ang_err[ids] = pos_err, ang_err
        head_foot = (xz[:, 1] - self.goal_xz[patient, self.goal_idx[ids], 1]).abs()
        self.start_error[ids] = torch.stack([pos_err, head_foot], -1)
        self.hold[ids] = 0
        self.action[ids] = 0.0
        self.last_action[ids] = 0.0
        if self.renderer is not None:
            self._reset_images(ids, patient, poses)

    def _start_xz_yaw(self, patient: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start (x, z) (M, 2) on the skin and yaw (M,) for episodes of patients and goals (M,),
        drawn as task.start says; a start off the skin falls back to the box centre."""
        cfg, gen, dev, m = self.cfg, self.generator, self.device, len(patient)
        low, high = cfg.start.yaw_rad
        offset = low + (high - low) * torch.rand(m, generator=gen, device=dev)
        jitter = (2 * torch.rand(m, 2, generator=gen, device=dev) - 1) * self.start_half_extent
        if cfg.start.around == "goal":
            centre = self.goal_xz[patient, goal]
            yaw = wrap_into(self.goal_yaw[patient, goal] + offset, *cfg.actions.yaw_range_rad)
        else:
            centre, yaw = self.anchor_xz[patient], offset
        xz = torch.maximum(torch.minimum(centre + jitter, self.box_high[patient]), self.box_low[patient])
        point, _ = self.scene.skin.query(patient, xz[:, 0], xz[:, 1])
        return torch.where(torch.isfinite(point).all(-1, keepdim=True), xz, centre), yaw

    def _reset_images(self, ids: torch.Tensor, patient: torch.Tensor, poses: torch.Tensor) -> None:
        """The first image at poses (M, 7) and the goal image of environments ids (M,), in one
        render; with randomised imaging, each from a draw of its own."""
        cfg, m = self.cfg, len(ids)
        goal_poses = self.goal_poses[patient, self.goal_idx[ids]]
        params = None
        if cfg.observation.randomize_imaging:
            params = self.renderer.sample_params(2 * m, self.generator)
            for k in RENDER_PARAM_NAMES:
                getattr(self, f"render_{k}")[ids] = getattr(params, k)[:m]
        images = self.image(self.reset_renderer, torch.cat([poses, goal_poses]), torch.cat([patient, patient]), params)
        self.history[ids] = images[:m, None].expand(-1, cfg.observation.history, -1, -1)
        self.goal_image[ids] = images[m:]

    def image(self, renderer, poses: torch.Tensor, patient: torch.Tensor, params: RenderParams | None) -> torch.Tensor:
        """(M, S, planes * S) policy images at probe poses (M, 7) of patients (M,) with params
        (M rows or None): the image plane, and with task.observation.planes = 2 the plane turned
        90 degrees about the beam beside it (`sim.ultrasound.biplane`)."""
        planes = self.cfg.observation.planes
        # Own state, valid by construction: no input checks, no host synchronisation.
        images = renderer.render(
            plane_poses(poses, planes), patient.repeat(planes), plane_params(params, planes), check=False
        )
        return side_by_side(images, planes)

    def get_observations(self) -> TensorDict:
        cfg = self.cfg
        obs_cfg = cfg.observation
        relative = observations.relative_goal_pose(
            self.poses, self.goal_pose, obs_cfg.position_scale_m, obs_cfg.angle_scale_rad
        )
        arm = self.arm
        proprio = observations.proprioception(cfg, self.yaw, self.tilt, self.force, self.last_action)
        pose = observations.pose_state(
            cfg, self.q, arm.lower.float(), arm.upper.float(), self.poses, self.scene.anchor[self.patient_idx]
        )
        progress = observations.progress_state(self.pos_err, self.ang_err, self.hold, self.episode_length_buf, cfg)
        images = (self.history, self.goal_image) if self.renderer is not None else (None, None)
        groups = observations.actor_groups(cfg, proprio, relative, *images)
        groups["critic"] = torch.cat([relative, pose, proprio, progress], -1)
        return TensorDict(groups, batch_size=[self.num_envs], device=self.device)

    # -- the contract of generic tools (sim.envs.snapshot)

    def snapshot(self, env_ids: torch.Tensor | None = None) -> EnvSnapshot:
        """Environments env_ids (None: all) now: the probe held by the arm (named by its robot
        config), the goal pose and newest image; extras: goal_name (list of M), position_error_m
        and angle_error_rad (M,) to the goal, goal_image (M, S, S) with images."""
        ids = (
            torch.arange(self.num_envs, device=self.device)
            if env_ids is None
            else torch.as_tensor(env_ids, device=self.device)
        )
        patient = self.patient_idx[ids]
        goal = self.goal_idx[ids]
        extras = {"goal_name": [self.goal_names[g] for g in goal.tolist()]}
        extras.update(position_error_m=self.pos_err[ids], angle_error_rad=self.ang_err[ids])
        if self.renderer is not None:
            extras["goal_image"] = self.goal_image[ids]
        return EnvSnapshot(
            env_ids=ids,
            patient=patient,
            step=self.episode_length_buf[ids],
            tool_poses={PROBE: self.poses[ids]},
            tool_forces={PROBE: self.force[ids]},
            joint_positions={ARM: self.q[ids]},
            base_poses=self.scene.base_poses(patient),
            goal_pose=self.goal_poses[patient, goal],
            image=self.history[ids, 0] if self.renderer is not None else None,
            extras=extras,
        )

    @torch.inference_mode()
    def drive_tools(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One control step of the arm toward probe targets {"probe": (N, 7)} (see `BatchedEnv.drive_tools`);
        the success test (tolerances, hold counter) is the task's own."""
        probe = targets.get(PROBE) if set(targets) == {PROBE} else None
        got = {k: tuple(v.shape) for k, v in targets.items()}
        require(
            probe is not None and tuple(probe.shape) == (self.num_envs, 7),
            "tool targets",
            f"{{'probe': ({self.num_envs}, 7) poses}}",
            got,
        )
        check_poses(probe)  # outside data; the backend's IK and contact skip their checks (sync-free)
        self.drive(probe.to(self.device, torch.float32))
        self.episode_length_buf += 1
        _, terminated, _ = self._evaluate()
        return terminated | (self.episode_length_buf >= self.max_episode_length)
