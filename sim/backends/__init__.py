"""Simulation backends: `torch` (embedded default: kinematic arm, quasi-static contact, no physics
engine) and, later, `isaaclab`. A task talks to a backend through the small interface of
`sim.backends.torch.TorchBackend`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sim.anatomy.patient import Patient
from sim.errors import InputError
from sim.robot.mount import RobotCfg

BACKENDS = ("torch",)


def make_backend(name: str, patients: Sequence[Patient], robot: RobotCfg, anchor: str, device: torch.device | str):
    """The backend called `name` for `patients` (the batch's patient bank order)."""
    if name == "torch":
        from sim.backends.torch import TorchBackend

        return TorchBackend(patients, robot, anchor, device)
    raise InputError(f"backend {name!r}: expected one of {list(BACKENDS)}")
