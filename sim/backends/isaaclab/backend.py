"""`IsaacLabScene`: a `SceneCfg` as an Isaac Lab 3 physics scene (`sim.backends.protocol.SceneBackend`).

Each robot is an articulation with joint position drives; every physics step Isaac Lab's
`DifferentialIKController` turns each tool's target into joint targets, and the joint angles the
physics reaches are the robots' state. A probe's contact force is its contact sensor's reading
against the patient's body collider. Tool poses are the forward kinematics of those joint angles
on sonolab's own chain of the same URDF (it matches the physics engine's to well under a
micrometre), in each environment's patient frame, so a task, its rewards and the ultrasound
renderer are the torch backend's, unchanged.

Composition, not inheritance: the kinematic model (forward kinematics, the placement IK at an
episode start, the skin geometry of a contact) is a `TorchScene` this scene holds. The physics
engine's own state (joint velocities, drive targets, the last control step's sensed forces) is
in `state_dict`, so a run resumes exactly on this backend too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import torch
from isaaclab.controllers import DifferentialIKController, DifferentialIKControllerCfg
from isaaclab.scene import InteractiveScene
from isaaclab.sim import SimulationContext

from sim.anatomy.cache import default_cache_dir
from sim.anatomy.patient import Patient
from sim.backends.isaaclab.config import IsaacLabCfg
from sim.backends.isaaclab.scene import contact_key, env_patients, open_scene, robot_key, scene_cfgs
from sim.backends.isaaclab.solver_state import load_solver_state, solver_state
from sim.backends.scene import SceneCfg
from sim.backends.torch import TorchScene
from sim.config import build
from sim.errors import InputError
from sim.robot.arm import compose_poses, invert_poses
from sim.robot.contact import Contact
from sim.transforms import matrix_to_quat

STATE_PARTS = ("joint_pos", "joint_vel", "joint_target")  # per robot, (N, dof) each


def to_xyzw(quat_wxyz: torch.Tensor) -> torch.Tensor:
    return quat_wxyz[..., [1, 2, 3, 0]]


class IsaacLabScene:
    """num_envs environments of an Isaac Lab scene; environment i holds patient `env_patient[i]`.

    The scene describes its world as Isaac Lab configs (`sim_cfg`, `scene_cfg`) and opens it
    itself, or, with open_world=False, leaves that to an Isaac Lab environment class
    (`tasks.isaaclab_env.SonolabDirectEnv`), which creates the simulation and scene from those
    configs and hands them over with `attach`.
    """

    name = "isaaclab"

    def __init__(
        self,
        patients: Sequence[Patient],
        cfg: SceneCfg,
        num_envs: int,
        device: torch.device | str,
        settings: Mapping | None = None,
        open_world: bool = True,
    ) -> None:
        self.kinematics = TorchScene(patients, cfg, device)
        k = self.kinematics
        self.cfg, self.device, self.arms, self.robot_of = k.cfg, k.device, k.arms, k.robot_of
        self.probes, self.skin, self.anchor = k.probes, k.skin, k.anchor
        s = self.settings = build(IsaacLabCfg, settings or {}, "backend (isaaclab)")
        if s.physics not in ("newton", "physx"):
            raise InputError(f"backend.physics {s.physics!r}: expected newton (kit-less) or physx (Isaac Sim)")
        if s.physics == "physx" and open_world:
            # Isaac Sim (kit) must run before any scene exists; an Isaac Lab workflow launches it itself.
            from isaaclab.app import AppLauncher

            self.app = AppLauncher(headless=s.headless, device=str(self.device)).app
        cache = Path(s.cache_dir).expanduser() if s.cache_dir else default_cache_dir().parent / "isaaclab"
        self.sim_cfg, self.scene_cfg, self.anchor_local = scene_cfgs(
            patients, cfg, self.arms, num_envs, str(self.device), s, cache
        )
        self.num_envs = num_envs
        self.env_patient = torch.as_tensor(env_patients(len(patients), num_envs), device=self.device)
        ik = DifferentialIKControllerCfg(
            command_type="pose",
            use_relative_mode=False,
            ik_method="dls",
            ik_params={"lambda_val": s.ik_damping},
        )
        self.ik = {name: DifferentialIKController(ik, num_envs=num_envs, device=str(self.device)) for name in self.arms}
        self.physics_dt = 1.0 / s.physics_hz
        # N per probe tool, the mean sensed force over the last control step.
        self.mean_force = {tool: torch.zeros(num_envs, device=self.device) for tool in self.probes}
        if open_world:
            self.attach(*open_scene(self.sim_cfg, self.scene_cfg))

    def attach(self, sim: SimulationContext, scene: InteractiveScene) -> None:
        """Drive the started simulation and scene built from `sim_cfg` and `scene_cfg`."""
        self.sim, self.scene = sim, scene
        self.robots = {name: scene[robot_key(name)] for name in self.arms}
        self.sensors = {tool: scene[contact_key(tool)] for tool in self.probes}
        self.joint_ids = {
            name: self.robots[name].find_joints(list(arm.joint_names), preserve_order=True)[0]
            for name, arm in self.arms.items()
        }

    # -- the protocol: what the kinematic model answers

    def home(self, n: int) -> dict[str, torch.Tensor]:
        return self.kinematics.home(n)

    def tool_poses(self, q: Mapping[str, torch.Tensor], patient_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.kinematics.tool_poses(q, patient_idx)

    def base_poses(self, patient_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.kinematics.base_poses(patient_idx)

    def patients_for(self, env_ids: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """Each environment's body is part of the physics scene: it keeps its patient."""
        return self.env_patient[env_ids]

    # -- the protocol: physics

    def _joint_positions(self, robot: str) -> torch.Tensor:
        articulation = self.robots[robot]
        return articulation.data.joint_pos.torch[:, self.joint_ids[robot]].to(self.device, torch.float32)

    def _write_joints(self, robot: str, q: torch.Tensor, qd: torch.Tensor, target: torch.Tensor, env_ids) -> None:
        """Teleport robot's joints of env_ids (None: all) to angles q with velocities qd and drive targets."""
        articulation, joints = self.robots[robot], self.joint_ids[robot]
        dev = articulation.device
        ids = None if env_ids is None else env_ids.to(dev)
        articulation.write_joint_state_to_sim_index(
            position=q.to(dev), velocity=qd.to(dev), joint_ids=joints, env_ids=ids
        )
        articulation.actuators.target_command.set_position_index(value=target.to(dev), joint_ids=joints, env_ids=ids)

    def place(
        self,
        q0: Mapping[str, torch.Tensor],
        patient_idx: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        env_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teleport the arms of env_ids (None: all) to the IK solution for targets (an episode start)."""
        q = self.kinematics.place(q0, patient_idx, targets, env_ids)
        for robot in {self.robot_of[tool] for tool in targets}:
            self._write_joints(robot, q[robot], torch.zeros_like(q[robot]), q[robot], env_ids)
            self.ik[robot].reset(None if env_ids is None else env_ids.to(self.robots[robot].device))
        return q

    def follow(
        self,
        q: Mapping[str, torch.Tensor],
        patient_idx: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        dt: float,
    ) -> dict[str, torch.Tensor]:
        """Joint angles {robot: (N, dof)} after dt seconds of physics, the differential-IK
        controllers driving each tool toward its target (N, 7), patient frame; robots without a
        target hold their drive targets. The incoming q is the physics' own (the engine's state)."""
        self.kinematics.check_targets(targets, patient_idx.shape[0], "targets")
        driven = []
        for tool, target in targets.items():
            robot = self.robot_of[tool]
            arm = self.arms[robot]
            base = arm.base_pose.to(self.device, torch.float32).expand(len(target), 7)
            anchored = self.kinematics.to_anchor_frame(target, patient_idx)
            target_b = compose_poses(invert_poses(base), anchored)  # robot base frame
            command = torch.cat([target_b[:, :3], to_xyzw(target_b[:, 3:])], -1)
            self.ik[robot].set_command(command.to(self.robots[robot].device))
            # Each physics step's joint targets lie at most one control step's travel (velocity limit x dt)
            # from the joints: closer targets would cap the drives' speed at stiffness x offset / damping.
            driven.append((robot, arm, arm.velocity.float() * dt))
        steps = max(1, round(dt / self.physics_dt))
        for tool in self.probes:
            self.mean_force[tool] = torch.zeros(self.num_envs, device=self.device)
        for _ in range(steps):
            for robot, arm, max_delta in driven:
                q_now = self._joint_positions(robot)
                tool_pose, jacobian = arm.kinematics(q_now, check=False)
                ee_quat = to_xyzw(matrix_to_quat(tool_pose[:, :3, :3]))
                q_des = self.ik[robot].compute(tool_pose[:, :3, 3], ee_quat, jacobian, q_now)
                q_des = q_now + (q_des - q_now).clamp(-max_delta, max_delta)
                self.robots[robot].actuators.target_command.set_position_index(
                    value=q_des.to(self.robots[robot].device), joint_ids=self.joint_ids[robot]
                )
            self.scene.write_data_to_sim()
            self.sim.step(render=False)
            self.scene.update(self.physics_dt)
            for tool, sensor in self.sensors.items():
                forces = sensor.data.force_matrix_w.torch[:, 0, 0]  # (N, 3): tool <- body, world
                self.mean_force[tool] += forces.norm(dim=-1).to(self.device, torch.float32) / steps
        return {robot: self._joint_positions(robot) for robot in self.arms}

    def contacts(
        self, patient_idx: torch.Tensor, poses: Mapping[str, torch.Tensor], env_ids: torch.Tensor | None = None
    ) -> dict[str, Contact]:
        """The skin model's contact geometry with the force the contact sensor measured on each
        probe (N), averaged over the last control step's physics steps; at an episode start
        (env_ids), before any physics step, the skin model's force, which the sensed force of
        those environments then starts from."""
        geometry = self.kinematics.contacts(patient_idx, poses, env_ids)
        if env_ids is not None:
            for tool, contact in geometry.items():
                self.mean_force[tool][env_ids] = contact.force_n
            return geometry
        return {tool: dataclasses.replace(c, force_n=self.mean_force[tool]) for tool, c in geometry.items()}

    # -- exact resume

    def state_dict(self) -> dict:
        """{"<robot>/joint_pos" | "<robot>/joint_vel" | "<robot>/joint_target": (N, dof),
        "<tool>/force_n": (N,)}: the engine's joint state and drive targets, the sensed forces,
        and the solver's warm start (`solver_state`)."""
        state = solver_state(self.settings.physics)
        for robot, articulation in self.robots.items():
            joints = self.joint_ids[robot]
            parts = (
                articulation.data.joint_pos.torch,
                articulation.data.joint_vel.torch,
                articulation.actuators.target_command.position.torch,
            )
            for part, value in zip(STATE_PARTS, parts):
                state[f"{robot}/{part}"] = value[:, joints].to(self.device, torch.float32).clone()
        for tool, force in self.mean_force.items():
            state[f"{tool}/force_n"] = force.clone()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        expected = {f"{r}/{part}" for r in self.robots for part in STATE_PARTS} | {f"{t}/force_n" for t in self.probes}
        expected |= set(solver_state(self.settings.physics))
        if set(state) != expected:
            raise InputError(f"isaaclab scene state: expected keys {sorted(expected)}, got {sorted(state)}")
        for key, value in state.items():
            robot = key.split("/")[0]
            if robot == "solver":
                continue
            n = self.arms[robot].dof if robot in self.arms else None
            shape = (self.num_envs,) if n is None else (self.num_envs, n)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise InputError(f"isaaclab scene state {key!r}: expected shape {shape}, got {got}")
        for robot in self.robots:
            self._write_joints(robot, *(state[f"{robot}/{part}"] for part in STATE_PARTS), None)
        load_solver_state(self.settings.physics, state)
        for tool in self.probes:
            self.mean_force[tool] = state[f"{tool}/force_n"].to(self.device, torch.float32).clone()

    def close(self) -> None:
        """Release the simulation (one per process)."""
        self.sim.clear_instance()
