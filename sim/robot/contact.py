"""Probe on skin: batched skin lookups and a quasi-static contact model.

The tissue under a pressed probe acts as a linear spring along the skin normal: the contact force
is `stiffness * penetration`, penetration being how far the centre of the probe face sits below
the skin surface. No deformation is simulated; the renderer's conforming-contact term (gel fills
air within each line's reach) stands in for the skin wrapping the face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient, SkinSurface
from sim.errors import InputError
from sim.transforms import check_poses

# Indentation stiffness of the back's soft tissue under a probe-sized indenter, about 2 N/mm
# (scanning forces of 5-20 N press the skin 2.5-10 mm).
DEFAULT_STIFFNESS_N_PER_M = 2000.0


class SkinBank:
    """The back's skin height maps of several patients, stacked on one device.

    maps: (P, A, B, 4) float32 per grid point: skin y and the outward unit normal, NaN where the
    column misses the body or lies beyond a smaller patient's map. origin (P, 2) and step (P, 2)
    give each map's (x, z) of grid point [0, 0] and its grid steps, metres; size (P, 2) its A, B.
    """

    def __init__(self, patients: Sequence[Patient], device: torch.device | str = "cpu") -> None:
        missing = [p.name for p in patients if p.skin is None]
        if missing:
            raise InputError(f"patients {missing}: expected a skin surface (run sim.anatomy.derive first)")
        self._stack([p.skin for p in patients], device)

    @classmethod
    def from_surfaces(cls, surfaces: Sequence[SkinSurface], device: torch.device | str = "cpu") -> "SkinBank":
        """A bank of bare skin height maps (a robot's surface scan, say), no patients needed."""
        bank = cls.__new__(cls)
        bank._stack(surfaces, device)
        return bank

    def _stack(self, surfaces: Sequence[SkinSurface], device: torch.device | str) -> None:
        shape = np.max([s.y.shape for s in surfaces], axis=0)
        maps = np.full((len(surfaces), *shape, 4), np.nan, np.float32)
        for i, s in enumerate(surfaces):  # preprocessing, once per bank
            a, b = s.y.shape
            maps[i, :a, :b, 0] = s.y
            maps[i, :a, :b, 1:] = s.normal
        self.device = torch.device(device)
        self.maps = torch.from_numpy(maps).to(self.device)
        self.origin = torch.tensor([[s.x0, s.z0] for s in surfaces], dtype=torch.float32, device=self.device)
        self.step = torch.tensor([[s.dx, s.dz] for s in surfaces], dtype=torch.float32, device=self.device)
        self.size = torch.tensor([s.y.shape for s in surfaces], dtype=torch.int64, device=self.device)

    def query(self, patient_idx: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Skin point (N, 3) and outward unit normal (N, 3) above (x, z) (N,) metres.

        Bilinear in the height map, like `sim.anatomy.surface.skin_point`; NaN off the body.
        """
        f = (torch.stack([x, z], -1) - self.origin[patient_idx]) / self.step[patient_idx]  # (N, 2)
        last = (self.size[patient_idx] - 1).to(f.dtype)
        off = ((f < 0) | (f > last)).any(-1)
        f0 = torch.minimum(f.floor().clamp_min(0), last - 1)
        t = f - f0
        a0, b0 = f0.long().unbind(-1)
        _, A, B, _ = self.maps.shape
        flat = self.maps.reshape(-1, 4)
        at = lambda a, b: flat[(patient_idx * A + a) * B + b]  # noqa: E731  (N, 4), no per-env copy
        ta, tb = t[:, :1], t[:, 1:]
        v = (
            at(a0, b0) * (1 - ta) * (1 - tb)
            + at(a0 + 1, b0) * ta * (1 - tb)
            + at(a0, b0 + 1) * (1 - ta) * tb
            + at(a0 + 1, b0 + 1) * ta * tb
        )
        v = torch.where(off[:, None], torch.nan, v)
        point = torch.stack([x, v[:, 0], z], -1)
        point = torch.where(off[:, None], torch.nan, point)
        return point, v[:, 1:] / v[:, 1:].norm(dim=-1, keepdim=True)


@dataclass
class Contact:
    """Probe-skin contact per environment (N = environments).

    penetration_m (N,): depth of the face centre below the skin along the normal (negative when
    lifted off). force_n (N,): contact force magnitude, newtons. normal (N, 3): outward skin normal.
    touching (N,) bool: the face meets the skin. on_body (N,) bool: the face is over the back's
    skin map at all (elsewhere penetration and normal are NaN, force is 0).
    """

    penetration_m: torch.Tensor
    force_n: torch.Tensor
    normal: torch.Tensor
    touching: torch.Tensor
    on_body: torch.Tensor


def probe_contact(
    skin: SkinBank,
    patient_idx: torch.Tensor,
    poses: torch.Tensor,
    stiffness_n_per_m: float = DEFAULT_STIFFNESS_N_PER_M,
    check: bool = True,
) -> Contact:
    """Contact of probe faces (poses (N, 7), patient frame) with each environment's skin.

    The tissue pushes back along the skin normal with `stiffness_n_per_m * penetration`. A face
    tilted so its beam does not point into the body still touches; the renderer darkens the lines
    that lose coupling. check=False skips the pose checks, which read the poses back to the host
    (a sync on CUDA), for poses valid by construction (an environment's own).
    """
    if check:
        check_poses(poses)
    point, normal = skin.query(patient_idx, poses[:, 0], poses[:, 2])
    on_body = torch.isfinite(point).all(-1)
    penetration = ((point - poses[:, :3]) * normal).sum(-1)
    touching = on_body & (penetration >= 0)
    force = torch.where(touching, stiffness_n_per_m * penetration, 0.0)
    return Contact(penetration, force, normal, touching, on_body)
