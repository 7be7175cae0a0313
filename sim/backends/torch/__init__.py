"""The torch backend: a kinematic arm holding the probe and quasi-static probe-skin contact.

The arm is moved by damped-least-squares steps toward each control step's probe target (joint
velocity limits respected), so the probe lags targets it cannot reach, exactly as a position-
controlled arm would. Frames: each environment's world is its patient frame; the robot base is
placed relative to the patient's anchor vertebra so one placement suits every patient.

Its inputs come from the environment's own state, so every method runs the kinematics, IK and
contact with check=False: nothing reads tensor values back to the host (sync-free on GPUs).
Callers passing outside data (an external controller's targets) check it first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.errors import InputError
from sim.robot.arm import Arm
from sim.robot.contact import Contact, SkinBank, probe_contact
from sim.robot.ik import joint_step, solve_ik
from sim.robot.mount import RobotCfg


class TorchBackend:
    """Kinematic probe-holding arm for N environments over the patients of one bank.

    anchor: (P, 3) each patient's anchor point (the centre of vertebra `anchor`), metres,
    patient frame; the arm works in the anchor frame (patient frame minus the anchor).
    """

    name = "torch"

    def __init__(self, patients: Sequence[Patient], robot: RobotCfg, anchor: str, device: torch.device | str) -> None:
        missing = [p.name for p in patients if anchor not in p.landmarks]
        if missing:
            raise InputError(f"patients {missing}: expected landmark {anchor!r} to anchor the robot (run derive first)")
        self.device = torch.device(device)
        self.cfg = robot
        base = torch.tensor([*robot.base_position_m, *robot.base_quat_wxyz], dtype=torch.float32)
        self.arm = Arm(robot.name, robot.tool_frame, base_pose=base, device=self.device)
        self.skin = SkinBank(patients, self.device)
        self.anchor = torch.tensor(
            np.array([p.landmarks[anchor].centre for p in patients]), dtype=torch.float32, device=self.device
        )

    def _to_arm_frame(self, poses: torch.Tensor, patient_idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([poses[:, :3] - self.anchor[patient_idx], poses[:, 3:]], -1)

    def home(self, n: int) -> torch.Tensor:
        """(n, dof) the arm's home joint angles, float32."""
        return self.arm.home.float().expand(n, self.arm.dof).clone()

    def patients_for(self, env_ids: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """The patients (n,) environments env_ids (n,) start their next episodes with, given the
        task's random draw (n,): any patient can go anywhere here."""
        return drawn

    def place(
        self, q0: torch.Tensor, patient_idx: torch.Tensor, targets: torch.Tensor, env_ids: torch.Tensor
    ) -> torch.Tensor:
        """Joint angles (n, dof) placing the probe at targets (n, 7) (patient frame), from q0, for
        environments env_ids (n,) at an episode start."""
        target = self._to_arm_frame(targets, patient_idx)
        result = solve_ik(self.arm, target, q0, self.cfg.reset_ik_iterations, self.cfg.damping, check=False)
        return result.q

    def follow(self, q: torch.Tensor, patient_idx: torch.Tensor, targets: torch.Tensor, dt: float) -> torch.Tensor:
        """Joint angles (N, dof) after one control step of length dt (s) toward targets (N, 7)."""
        target = self._to_arm_frame(targets, patient_idx)
        max_delta = self.arm.velocity.to(q.dtype) * (dt / self.cfg.substeps)
        for _ in range(self.cfg.substeps):
            q = joint_step(self.arm, q, target, max_delta, self.cfg.damping, check=False)
        return q

    def probe_poses(self, q: torch.Tensor, patient_idx: torch.Tensor) -> torch.Tensor:
        """Probe face poses (N, 7) in each environment's patient frame for joint angles q (N, dof)."""
        poses = self.arm.forward_world(q, check=False)
        return torch.cat([poses[:, :3] + self.anchor[patient_idx], poses[:, 3:]], -1)

    def contact(self, patient_idx: torch.Tensor, poses: torch.Tensor, env_ids: torch.Tensor | None = None) -> Contact:
        """Probe-skin contact of probe poses (N, 7), patient frame, of every environment or of
        env_ids (at an episode start)."""
        return probe_contact(self.skin, patient_idx, poses, self.cfg.stiffness_n_per_m, check=False)
