"""The `Patient`: label and CT volumes on a voxel grid, plus the data derived from them.

Conventions (see DESIGN.md): the patient frame is RAS (+x right, +y anterior, +z superior) in
metres. Volumes are indexed `[i, j, k]` and `affine @ (i, j, k, 1)` gives the voxel centre in the
patient frame. Loaders bring every input to RAS-ordered axes with positive spacing, so the
affine's 3x3 block is `diag(spacing)` up to a small rotation for oblique scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sim.anatomy.tissues import TISSUE_CLASSES
from sim.errors import InputError

if TYPE_CHECKING:  # plans.py builds on this module
    from sim.anatomy.plans import ScrewPlan


@dataclass
class Plane:
    """A standard plane in the patient frame (metres).

    `origin` (3,) lies in the plane; `normal` (3,) is its unit normal; `u` (3,) and `v` (3,) are
    unit in-plane axes (`u` lateral across the image, `v` along the beam, into the body), so that
    a probe imaging this plane has its +x along `u`, +z along `v` and +y along `normal`.
    """

    origin: np.ndarray
    normal: np.ndarray
    u: np.ndarray
    v: np.ndarray


@dataclass
class VertebraLandmarks:
    """Landmarks of one vertebra, patient frame, metres.

    `centre` (3,) is the vertebral body centroid; `axes` (3, 3) has rows cranio-caudal (pointing
    superior, along the canal), antero-posterior (pointing posterior, toward the back) and
    left-right (pointing to the patient's right), orthonormal. `planes` maps view names
    ("transverse", "parasagittal_left", "parasagittal_right") to `Plane`s.
    """

    name: str
    centre: np.ndarray
    axes: np.ndarray
    planes: dict[str, Plane]


@dataclass
class SkinSurface:
    """The back's skin as a height map over the patient's (x, z) plane, for placing a probe.

    For grid point `[a, b]` at `x = x0 + a * dx`, `z = z0 + b * dz`: `y[a, b]` is the y of the most
    posterior skin point (NaN where the column misses the body) and `normal[a, b]` (3,) the unit
    outward normal there (pointing roughly -y, posterior). Metres.
    """

    x0: float
    z0: float
    dx: float
    dz: float
    y: np.ndarray  # (A, B)
    normal: np.ndarray  # (A, B, 3)


@dataclass
class Patient:
    """A patient ready for simulation.

    tissue: (I, J, K) uint8, indices into `TISSUE_CLASSES` (0 = air).
    structures: (I, J, K) uint8 structure ids, 0 = no structure; names in `structure_names`
        follow TotalSegmentator v2 (e.g. "vertebrae_L3", "spinal_cord", "kidney_left").
    affine: (4, 4) float64, voxel index -> patient frame in metres.
    ct: optional (I, J, K) float32 Hounsfield units.
    split: "train" or "test".
    Derived (filled by `sim.anatomy.derive`): `skin`, `landmarks` (vertebra name -> landmarks,
    lumbar levels present), `plans` ("vertebrae_Lx/left" or ".../right" -> pedicle-screw plan,
    `sim.anatomy.plans`), `meshes` (name -> trimesh.Trimesh in the patient frame).
    """

    name: str
    tissue: np.ndarray
    structures: np.ndarray
    structure_names: dict[str, int]
    affine: np.ndarray
    ct: np.ndarray | None = None
    split: str = "train"
    skin: SkinSurface | None = None
    landmarks: dict[str, VertebraLandmarks] = field(default_factory=dict)
    plans: dict[str, ScrewPlan] = field(default_factory=dict)
    meshes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tissue.shape)

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in metres along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def validate(self) -> None:
        """Check shapes, dtypes and values; raise `InputError` naming the field otherwise."""
        who = f"patient '{self.name}'"
        if self.tissue.ndim != 3 or self.tissue.dtype != np.uint8:
            raise InputError(f"{who} tissue: expected a 3-D uint8 volume, got {self.tissue.dtype} {self.tissue.shape}")
        if self.structures.shape != self.tissue.shape or self.structures.dtype != np.uint8:
            raise InputError(
                f"{who} structures: expected uint8 of shape {self.tissue.shape}, "
                f"got {self.structures.dtype} {self.structures.shape}"
            )
        if self.ct is not None and self.ct.shape != self.tissue.shape:
            raise InputError(f"{who} ct: expected shape {self.tissue.shape} like the labels, got {self.ct.shape}")
        if self.ct is not None and not np.isfinite(self.ct).all():
            raise InputError(f"{who} ct: expected finite Hounsfield units, found NaN or infinite values")
        if self.affine.shape != (4, 4) or not np.isfinite(self.affine).all():
            raise InputError(f"{who} affine: expected a finite 4x4 matrix, got {self.affine}")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise InputError(f"{who} affine: expected an invertible voxel-to-patient matrix, got {self.affine}")
        if int(self.tissue.max(initial=0)) >= len(TISSUE_CLASSES):
            raise InputError(
                f"{who} tissue: expected class ids below {len(TISSUE_CLASSES)} ({', '.join(TISSUE_CLASSES)}), "
                f"found {int(self.tissue.max())}"
            )
        if self.split not in ("train", "test"):
            raise InputError(f"{who} split: expected 'train' or 'test', got {self.split!r}")

    def world_to_voxel(self) -> np.ndarray:
        """(4, 4) inverse of `affine`: patient frame metres -> continuous voxel index."""
        return np.linalg.inv(self.affine)
