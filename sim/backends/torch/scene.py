"""`TorchScene`: the torch backend (embedded default) of a `sim.backends.scene.SceneCfg`, named
kinematic arms over the patients of one bank; it implements `sim.backends.protocol.SceneBackend`.

Composition: one `sim.robot.arm.Arm` per named robot, moved by the damped-least-squares steps of
`sim.robot.ik` toward each control step's tool target (joint velocity limits respected, so a tool
lags targets it cannot reach, exactly as a position-controlled arm would), plus one `SkinBank`
for the probe tools' quasi-static skin contact. No physics engine: the scene holds no
per-environment state (its `state_dict` is empty); the caller keeps the joint angles, as dicts
{robot name: (N, dof)}, and passes them in.

Frames: each environment's world is its patient frame; every base is placed in the anchor frame
(the patient frame minus the anchor landmark's centre), so one placement suits every patient.
Targets and tool poses are patient-frame poses (N, 7) keyed by tool name.

Every method is batched over environments (a Python loop runs over the few robots only) and
uses check=False in the kinematics, IK and contact: nothing reads tensor values back to the host
(sync-free on GPUs). Dict keys, shapes and devices are checked (Python-level, no sync); callers
passing outside data (an external controller's targets) check the values first.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.backends.scene import SceneCfg, SceneRobotCfg
from sim.errors import InputError
from sim.robot.arm import Arm
from sim.robot.contact import Contact, SkinBank, probe_contact
from sim.robot.ik import joint_step, solve_ik


class TorchScene:
    """Kinematic named arms, each holding one named tool, for N environments over `patients`.

    anchor: (P, 3) each patient's anchor point (centre of landmark `cfg.anchor`), metres, patient
    frame. arms: {robot name: Arm} with the base placed in the anchor frame. robot_of: {tool name:
    robot name}.
    """

    name = "torch"

    def __init__(self, patients: Sequence[Patient], cfg: SceneCfg, device: torch.device | str) -> None:
        if not isinstance(cfg, SceneCfg):
            raise InputError(f"cfg: expected a SceneCfg, got {type(cfg).__name__}")
        missing = [p.name for p in patients if cfg.anchor not in p.landmarks]
        if missing:
            raise InputError(
                f"patients {missing}: expected landmark {cfg.anchor!r} to anchor the robots (run derive first)"
            )
        self.device = torch.device(device)
        self.cfg = cfg
        self.robots: dict[str, SceneRobotCfg] = {r.name: r for r in cfg.robots}
        self.arms: dict[str, Arm] = {}
        for r in cfg.robots:
            base = torch.tensor([*r.base_position_m, *r.base_quat_wxyz], dtype=torch.float32)
            try:
                self.arms[r.name] = Arm(r.robot, r.tool_frame, base_pose=base, device=self.device)
            except InputError as err:
                raise InputError(f"robot {r.name!r}: {err}") from err
        self.device = next(iter(self.arms.values())).device  # resolved ("cuda" -> "cuda:0")
        self.robot_of: dict[str, str] = {r.tool.name: r.name for r in cfg.robots}
        self.probes = tuple(r.tool.name for r in cfg.robots if r.tool.kind == "probe")
        self.skin = SkinBank(patients, self.device)
        self.anchor = torch.tensor(
            np.array([p.landmarks[cfg.anchor].centre for p in patients]), dtype=torch.float32, device=self.device
        )

    # -- dict checks (Python only, no host sync) -------------------------------------------------

    def _joint_dict(self, q: Mapping[str, torch.Tensor], what: str) -> None:
        if not isinstance(q, Mapping) or set(q) != set(self.arms):
            got = sorted(q) if isinstance(q, Mapping) else type(q).__name__
            raise InputError(f"{what}: expected joint angles for robots {sorted(self.arms)}, got {got}")
        for name, arm in self.arms.items():
            arm.check_q(q[name], f"{what}[{name!r}]", finite=False)

    def check_targets(self, targets: Mapping[str, torch.Tensor], n: int, what: str) -> None:
        """InputError unless targets is {tool of this scene: (n, 7) poses on the scene's device}."""
        if not isinstance(targets, Mapping):
            raise InputError(f"{what}: expected a dict {{tool name: poses (N, 7)}}, got {type(targets).__name__}")
        unknown = sorted(set(targets) - set(self.robot_of))
        if unknown:
            raise InputError(f"{what}: unknown tools {unknown}, expected some of {sorted(self.robot_of)}")
        for tool, pose in targets.items():
            if not isinstance(pose, torch.Tensor) or pose.shape != (n, 7) or pose.device != self.device:
                shape = tuple(pose.shape) if isinstance(pose, torch.Tensor) else type(pose).__name__
                raise InputError(f"{what}[{tool!r}]: expected poses ({n}, 7) on {self.device}, got {shape}")

    def to_anchor_frame(self, poses: torch.Tensor, patient_idx: torch.Tensor) -> torch.Tensor:
        """Patient-frame poses (N, 7) of patients patient_idx (N,) in the anchor frame the bases stand in."""
        return torch.cat([poses[:, :3] - self.anchor[patient_idx].to(poses.dtype), poses[:, 3:]], -1)

    # -- the protocol -------------------------------------------------------------------------------

    def home(self, n: int) -> dict[str, torch.Tensor]:
        """{robot: (n, dof)} each arm's home joint angles, float32."""
        return {name: arm.home.float().expand(n, arm.dof).clone() for name, arm in self.arms.items()}

    def patients_for(self, env_ids: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """The task's random draw (n,): any patient can go to any environment here."""
        return drawn

    def base_poses(self, patient_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """{robot: (n, 7)} each robot base's pose in the patient frame of patients patient_idx (n,)."""
        out = {}
        for name, arm in self.arms.items():
            base = arm.base_pose.to(self.device, torch.float32).expand(len(patient_idx), 7).clone()
            base[:, :3] += self.anchor[patient_idx]
            out[name] = base
        return out

    def tool_poses(self, q: Mapping[str, torch.Tensor], patient_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """{tool: (N, 7)} each tool frame's pose in its environment's patient frame for joint
        angles q {robot: (N, dof)}."""
        self._joint_dict(q, "q")
        out = {}
        for tool, robot in self.robot_of.items():
            poses = self.arms[robot].forward_world(q[robot], check=False)
            out[tool] = torch.cat([poses[:, :3] + self.anchor[patient_idx].to(poses.dtype), poses[:, 3:]], -1)
        return out

    def place(
        self,
        q0: Mapping[str, torch.Tensor],
        patient_idx: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        env_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{robot: (n, dof)} joint angles placing each tool at its target (n, 7) (patient frame),
        from q0, at an episode start (`reset_ik_iterations` DLS steps); env_ids is for backends
        with a physical state (none here). A robot whose tool has no target keeps q0."""
        self._joint_dict(q0, "q0")
        n = patient_idx.shape[0]
        self.check_targets(targets, n, "targets")
        out = dict(q0)
        for tool, target in targets.items():
            robot = self.robot_of[tool]
            r = self.robots[robot]
            anchored = self.to_anchor_frame(target, patient_idx)
            result = solve_ik(self.arms[robot], anchored, q0[robot], r.reset_ik_iterations, r.damping, check=False)
            out[robot] = result.q
        return out

    def follow(
        self,
        q: Mapping[str, torch.Tensor],
        patient_idx: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        dt: float,
    ) -> dict[str, torch.Tensor]:
        """{robot: (N, dof)} joint angles after one control step of length dt (s) toward each
        tool's target (N, 7) (patient frame); joint velocity limits respected, so a tool lags a
        target it cannot reach. A robot whose tool has no target holds still."""
        self._joint_dict(q, "q")
        if not isinstance(dt, (int, float)) or not dt > 0:
            raise InputError(f"dt: expected a positive control period in seconds, got {dt!r}")
        self.check_targets(targets, patient_idx.shape[0], "targets")
        out = dict(q)
        for tool, target in targets.items():
            robot = self.robot_of[tool]
            r, arm = self.robots[robot], self.arms[robot]
            anchored = self.to_anchor_frame(target, patient_idx)
            qr = q[robot]
            max_delta = arm.velocity.to(qr.dtype) * (dt / r.substeps)
            for _ in range(r.substeps):
                qr = joint_step(arm, qr, anchored, max_delta, r.damping, check=False)
            out[robot] = qr
        return out

    def contacts(
        self, patient_idx: torch.Tensor, poses: Mapping[str, torch.Tensor], env_ids: torch.Tensor | None = None
    ) -> dict[str, Contact]:
        """{probe tool: Contact} quasi-static skin contact of each probe tool at poses {tool: (N, 7)}
        (its skin stiffness x the face's depth below the skin, `sim.robot.contact`); env_ids is
        for backends with a physical state."""
        missing = sorted(set(self.probes) - set(poses))
        if missing:
            raise InputError(f"poses: expected poses of the probe tools {list(self.probes)}, missing {missing}")
        out = {}
        for tool in self.probes:
            stiffness = self.robots[self.robot_of[tool]].tool.param("stiffness_n_per_m")
            out[tool] = probe_contact(self.skin, patient_idx, poses[tool], stiffness, check=False)
        return out

    def state_dict(self) -> dict:
        """Empty: kinematic arms hold no state of their own (the caller keeps the joint angles)."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        if len(state):
            raise InputError(f"torch scene state: expected no entries, got {sorted(state)}")

    def close(self) -> None:
        """Nothing to release."""
