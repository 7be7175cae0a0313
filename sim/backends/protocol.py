"""`SceneBackend`: the one protocol every simulation backend implements for a `SceneCfg`.

A task talks to its scene only through this protocol, so the same task runs on the torch backend
(`sim.backends.torch.TorchScene`: kinematic arms, quasi-static skin contact) and on Isaac Lab
(`sim.backends.isaaclab.IsaacLabScene`: articulations under physics, contact sensors). Backends
compose, they do not inherit: the Isaac Lab scene holds a `TorchScene` for its kinematic model
(forward kinematics, the skin geometry), not a base class.

Conventions (see `sim.backends.scene`): joint angles are dicts {robot name: (N, dof)} radians,
targets and tool poses dicts {tool name: (N, 7)} in each environment's patient frame
(x, y, z metres, qw, qx, qy, qz), N environments, patient_idx (N,) int64 into the patient bank.
The caller keeps the joint angles (state in tensors, not hidden in the backend); what a backend
holds of its own (a physics engine's joint velocities and drive targets) is its `state_dict`.
No method reads tensor values back to the host (sync-free on GPUs).
"""

from __future__ import annotations

from typing import Mapping, Protocol, runtime_checkable

import torch

from sim.backends.scene import SceneCfg
from sim.robot.arm import Arm
from sim.robot.contact import Contact, SkinBank

Joints = dict[str, torch.Tensor]
Poses = dict[str, torch.Tensor]


@runtime_checkable
class SceneBackend(Protocol):
    """Named arms holding named tools over the patients of one bank, for N environments.

    name: the backend's name ("torch", "isaaclab"). cfg: the scene it was built for. arms:
    {robot: Arm} each robot's kinematic model, base in the anchor frame (joint limits, URDF for
    drawing). robot_of: {tool: robot}. probes: the probe tools' names (those with skin contact).
    skin: the patients' skin surfaces. anchor: (P, 3) each patient's anchor point, metres,
    patient frame.
    """

    name: str
    device: torch.device
    cfg: SceneCfg
    arms: dict[str, Arm]
    robot_of: dict[str, str]
    probes: tuple[str, ...]
    skin: SkinBank
    anchor: torch.Tensor

    def home(self, n: int) -> Joints:
        """{robot: (n, dof)} each arm's home joint angles, float32."""

    def patients_for(self, env_ids: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """(n,) the patients environments env_ids (n,) start their next episodes with, given the
        task's random draw (n,) (a physics scene keeps each environment's body)."""

    def place(
        self, q0: Joints, patient_idx: torch.Tensor, targets: Poses, env_ids: torch.Tensor | None = None
    ) -> Joints:
        """{robot: (n, dof)} joint angles placing each tool at its target (n, 7) at an episode
        start of environments env_ids (n,) (None: q0 holds every environment); robots whose tool
        has no target keep q0."""

    def follow(self, q: Joints, patient_idx: torch.Tensor, targets: Poses, dt: float) -> Joints:
        """{robot: (N, dof)} joint angles after one control step of dt seconds toward each tool's
        target (N, 7); a tool lags a target it cannot reach; robots without a target hold still."""

    def tool_poses(self, q: Joints, patient_idx: torch.Tensor) -> Poses:
        """{tool: (N, 7)} each tool frame's pose for joint angles q."""

    def contacts(
        self, patient_idx: torch.Tensor, poses: Poses, env_ids: torch.Tensor | None = None
    ) -> dict[str, Contact]:
        """{probe tool: Contact} skin contact of the probe tools at poses, of every environment or
        of env_ids (an episode start, before any physics step). Contact.force_n (N,) newtons."""

    def base_poses(self, patient_idx: torch.Tensor) -> Poses:
        """{robot: (n, 7)} each robot base's pose in its environment's patient frame."""

    def state_dict(self) -> dict:
        """The backend's own state later steps depend on (tensors only), for exact resume."""

    def load_state_dict(self, state: Mapping) -> None:
        """Restore `state_dict()`'s state."""

    def close(self) -> None:
        """Release what the backend holds (a physics simulation)."""
