"""`IsaacLabBackend`: the torch backend's interface over an Isaac Lab 3 physics scene.

The arm is an articulation with joint position drives; each control step Isaac Lab's
`DifferentialIKController` turns the probe target into joint targets at every physics step, and
the joint angles the physics reaches are the arm's state. The contact force is the probe's
contact sensor reading against the patient's body collider. Probe poses are the forward
kinematics of those joint angles on sonolab's own chain of the same URDF (it matches the physics
engine's to well under a micrometre), in each environment's patient frame, so the task, its
rewards and the ultrasound renderer are the torch backend's, unchanged.
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
from sim.backends.isaaclab.scene import env_patients, open_scene, scene_cfgs
from sim.backends.torch import TorchBackend
from sim.config import build
from sim.errors import InputError
from sim.robot.arm import compose_poses, invert_poses
from sim.robot.contact import Contact
from sim.robot.mount import RobotCfg
from sim.transforms import matrix_to_quat


def to_xyzw(quat_wxyz: torch.Tensor) -> torch.Tensor:
    return quat_wxyz[..., [1, 2, 3, 0]]


class IsaacLabBackend(TorchBackend):
    """num_envs environments of an Isaac Lab scene; environment i holds patient `env_patient[i]`.

    The backend describes its world as Isaac Lab configs (`sim_cfg`, `scene_cfg`) and opens it
    itself, or, with open_world=False, leaves that to an Isaac Lab environment class
    (`tasks.isaaclab_env.SonolabDirectEnv`), which creates the simulation and scene from
    those configs and hands them over with `attach`.
    """

    name = "isaaclab"

    def __init__(
        self,
        patients: Sequence[Patient],
        robot: RobotCfg,
        anchor: str,
        num_envs: int,
        device: torch.device | str,
        settings: Mapping | None = None,
        open_world: bool = True,
    ) -> None:
        super().__init__(patients, robot, anchor, device)
        cfg = build(IsaacLabCfg, settings or {}, "backend (isaaclab)")
        if cfg.physics not in ("newton", "physx"):
            raise InputError(f"backend.physics {cfg.physics!r}: expected newton (kit-less) or physx (Isaac Sim)")
        if cfg.physics == "physx" and open_world:
            # Isaac Sim (kit) must run before any scene exists; an Isaac Lab workflow launches it itself.
            from isaaclab.app import AppLauncher

            self.app = AppLauncher(headless=cfg.headless, device=str(self.device)).app
        self.settings = cfg
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir().parent / "isaaclab"
        base = torch.tensor([*robot.base_position_m, *robot.base_quat_wxyz], dtype=torch.float64)
        self.sim_cfg, self.scene_cfg, self.anchor_local = scene_cfgs(
            patients, self.arm, base.numpy(), anchor, num_envs, str(self.device), cfg, cache
        )
        self.env_patient = torch.as_tensor(env_patients(len(patients), num_envs), device=self.device)
        self.base_in_anchor = base.float().to(self.device)
        ik = DifferentialIKControllerCfg(
            command_type="pose", use_relative_mode=False, ik_method="dls", ik_params={"lambda_val": cfg.ik_damping}
        )
        self.ik = DifferentialIKController(ik, num_envs=num_envs, device=str(self.device))
        self.physics_dt = 1.0 / cfg.physics_hz
        self.mean_force = torch.zeros(num_envs, device=self.device)  # N, over the last control step
        if open_world:
            self.attach(*open_scene(self.sim_cfg, self.scene_cfg))

    def attach(self, sim: SimulationContext, scene: InteractiveScene) -> None:
        """Drive the started simulation and scene built from `sim_cfg` and `scene_cfg`."""
        self.sim, self.scene = sim, scene
        self.robot = scene["robot"]
        self.sensor = scene["probe_contact"]
        self.joint_ids = self.robot.find_joints(list(self.arm.joint_names), preserve_order=True)[0]

    def patients_for(self, env_ids: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """Each environment's body is part of the physics scene: it keeps its patient."""
        return self.env_patient[env_ids]

    def _joint_positions(self) -> torch.Tensor:
        return self.robot.data.joint_pos.torch[:, self.joint_ids].to(self.device, torch.float32)

    def place(
        self, q0: torch.Tensor, patient_idx: torch.Tensor, targets: torch.Tensor, env_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teleport the arms of env_ids to the IK solution for targets (an episode start)."""
        q = super().place(q0, patient_idx, targets, env_ids)
        ids = env_ids.to(self.robot.device)
        q_sim = q.to(self.robot.device)
        self.robot.write_joint_position_to_sim_index(position=q_sim, joint_ids=self.joint_ids, env_ids=ids)
        self.robot.write_joint_velocity_to_sim_index(
            velocity=torch.zeros_like(q_sim), joint_ids=self.joint_ids, env_ids=ids
        )
        self.robot.actuators.target_command.set_position_index(value=q_sim, joint_ids=self.joint_ids, env_ids=ids)
        self.ik.reset(ids)
        return q

    def follow(self, q: torch.Tensor, patient_idx: torch.Tensor, targets: torch.Tensor, dt: float) -> torch.Tensor:
        """Joint angles (N, dof) after dt seconds of physics with the differential-IK controller
        driving the probe toward targets (N, 7), patient frame."""
        base = self.base_in_anchor.expand(len(targets), 7)
        target_b = compose_poses(invert_poses(base), self._to_arm_frame(targets, patient_idx))  # robot base frame
        command = torch.cat([target_b[:, :3], to_xyzw(target_b[:, 3:])], -1).to(self.robot.device)
        self.ik.set_command(command)
        steps = max(1, round(dt / self.physics_dt))
        # Each physics step's joint targets lie at most one control step's travel (velocity limit x dt)
        # from the joints: closer targets would cap the drives' speed at stiffness x offset / damping.
        max_delta = self.arm.velocity.float() * dt
        self.mean_force = torch.zeros(len(targets), device=self.device)
        for _ in range(steps):
            q_now = self._joint_positions()
            tool, jacobian = self.arm.kinematics(q_now)
            ee_quat = to_xyzw(matrix_to_quat(tool[:, :3, :3]))
            q_des = self.ik.compute(tool[:, :3, 3], ee_quat, jacobian, q_now)
            q_des = q_now + (q_des - q_now).clamp(-max_delta, max_delta)
            self.robot.actuators.target_command.set_position_index(
                value=q_des.to(self.robot.device), joint_ids=self.joint_ids
            )
            self.scene.write_data_to_sim()
            self.sim.step(render=False)
            self.scene.update(self.physics_dt)
            forces = self.sensor.data.force_matrix_w.torch[:, 0, 0]  # (N, 3): probe <- body, world
            self.mean_force += forces.norm(dim=-1).to(self.device, torch.float32) / steps
        return self._joint_positions()

    def contact(self, patient_idx: torch.Tensor, poses: torch.Tensor, env_ids: torch.Tensor | None = None) -> Contact:
        """The skin model's contact geometry with the force the contact sensor measured on the
        probe (N), averaged over the last control step's physics steps; at an episode start
        (env_ids), before any physics step, the skin model's force."""
        contact = super().contact(patient_idx, poses, env_ids)
        if env_ids is not None:
            return contact
        return dataclasses.replace(contact, force_n=self.mean_force)

    def close(self) -> None:
        """Release the simulation (one per process)."""
        self.sim.clear_instance()
