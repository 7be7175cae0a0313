"""Simulation backends: `torch` (embedded default: kinematic arms, quasi-static contact, no physics
engine) and `isaaclab` (Isaac Lab 3: each arm a physics articulation under differential IK, the
patient a static collider, contact sensors on the probes). Both implement one protocol,
`sim.backends.protocol.SceneBackend`, for the scene a task describes (`sim.backends.scene.SceneCfg`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sim.anatomy.patient import Patient
from sim.backends.protocol import SceneBackend
from sim.backends.scene import SceneCfg
from sim.backends.torch import TorchScene
from sim.errors import InputError

BACKENDS = ("torch", "isaaclab")
ISAAC_INSTALL = 'pip install -e ".[isaac]" (Python 3.12; Isaac Lab 3)'


def make_scene(
    backend: str | Mapping | SceneBackend,
    patients: Sequence[Patient],
    cfg: SceneCfg,
    num_envs: int,
    device: torch.device | str,
) -> SceneBackend:
    """The backend's scene `cfg` for `num_envs` environments over `patients` (the bank's order).

    backend: a name, a mapping {name, ...settings} (Hydra `backend.*`, conf/backend/<name>.yaml),
    or a scene already built (an Isaac Lab environment builds its own), returned as it is once it
    is known to be this scene over these patients.
    """
    if isinstance(backend, SceneBackend):
        if backend.cfg != cfg:
            raise InputError(f"backend: built for scene {backend.cfg}, the task describes {cfg}")
        if len(backend.anchor) != len(patients):
            raise InputError(f"backend: built for {len(backend.anchor)} patients, the task has {len(patients)}")
        return backend
    if not isinstance(backend, (str, Mapping)):
        raise InputError(f"backend: expected a name, a mapping {{name, ...}} or a built scene, got {backend!r}")
    settings = {"name": backend} if isinstance(backend, str) else dict(backend)
    name = settings.pop("name", None)
    if name == "torch":
        if settings:
            raise InputError(f"backend torch settings {sorted(settings)}: the torch backend takes none")
        return TorchScene(patients, cfg, device)
    if name == "isaaclab":
        try:
            from sim.backends.isaaclab.backend import IsaacLabScene
        except ImportError as err:
            raise InputError(
                f"backend isaaclab: Isaac Lab is not importable here ({err}); install it with {ISAAC_INSTALL}"
            ) from err
        return IsaacLabScene(patients, cfg, num_envs, device, settings)
    raise InputError(f"backend {name!r}: expected one of {list(BACKENDS)}")
