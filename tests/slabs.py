"""Small test patients: slabs of tissue, and probe poses looking into them from the back."""

import math

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.anatomy.tissues import TISSUE_ID

# Probe frame -> patient frame: probe x -> +x, probe z (beam) -> +y, probe y -> -z.
DOWN_Y = [math.cos(-math.pi / 4), math.sin(-math.pi / 4), 0.0, 0.0]


def slab_patient(layers: list[tuple[str, int]], lateral: int, spacing: float, name: str = "slab") -> Patient:
    """Layers stacked along +y (name, voxels), `lateral` voxels along x and z, origin at the centre."""
    depth = sum(n for _, n in layers)
    tissue = np.empty((lateral, depth, lateral), np.uint8)
    y = 0
    for tissue_name, n in layers:
        tissue[:, y : y + n, :] = TISSUE_ID[tissue_name]
        y += n
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(lateral - 1) / 2 * spacing, 0.0, -(lateral - 1) / 2 * spacing]
    return Patient(name, tissue, np.zeros_like(tissue), {}, affine)


def poses_at(y: float, n: int = 1, x: float = 0.0, z: float = 0.0, z_step: float = 0.0) -> torch.Tensor:
    """n probe poses looking down +y from depth y, spaced by z_step along z (elevation)."""
    pose = torch.tensor([[x, y, z] + DOWN_Y]).repeat(n, 1)
    pose[:, 2] += z_step * torch.arange(n)
    return pose
