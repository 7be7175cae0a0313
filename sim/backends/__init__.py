"""Simulation backends: `torch` (embedded default: kinematic arm, quasi-static contact, no physics
engine) and `isaaclab` (Isaac Lab 3: the arm as a physics articulation under differential IK, the
patient as a static collider, contact sensing). A task talks to a backend through the small
interface of `sim.backends.torch.TorchBackend`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sim.anatomy.patient import Patient
from sim.backends.torch import TorchBackend
from sim.errors import InputError
from sim.robot.mount import RobotCfg

BACKENDS = ("torch", "isaaclab")
ISAAC_INSTALL = 'pip install -e ".[isaac]" (Python 3.12; Isaac Lab 3)'


def make_backend(
    backend: str | Mapping | TorchBackend,
    patients: Sequence[Patient],
    robot: RobotCfg,
    anchor: str,
    num_envs: int,
    device: torch.device | str,
):
    """The backend for `num_envs` environments over `patients` (the batch's patient bank order).

    backend: a name, a mapping {name, ...settings} (Hydra `backend.*`, conf/backend/<name>.yaml),
    or a backend already built for these patients and environments, returned as it is.
    """
    if isinstance(backend, TorchBackend):
        if len(backend.anchor) != len(patients):
            raise InputError(f"backend: built for {len(backend.anchor)} patients, the task has {len(patients)}")
        return backend
    settings = {"name": backend} if isinstance(backend, str) else dict(backend)
    name = settings.pop("name", None)
    if name == "torch":
        if settings:
            raise InputError(f"backend torch settings {sorted(settings)}: the torch backend takes none")
        return TorchBackend(patients, robot, anchor, device)
    if name == "isaaclab":
        try:
            from sim.backends.isaaclab.backend import IsaacLabBackend
        except ImportError as err:
            raise InputError(
                f"backend isaaclab: Isaac Lab is not importable here ({err}); install it with {ISAAC_INSTALL}"
            ) from err
        return IsaacLabBackend(patients, robot, anchor, num_envs, device, settings)
    raise InputError(f"backend {name!r}: expected one of {list(BACKENDS)}")
