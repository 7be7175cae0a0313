"""Bone surface meshes (one per bone structure) for visualisation, collision and rewards."""

from __future__ import annotations

import warnings

import numpy as np
import trimesh
from scipy import ndimage
from skimage import measure

from sim.anatomy.patient import Patient
from sim.anatomy.tissue_map import TissueMap
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError

_SMOOTH_SIGMA_VOXELS = 0.7  # light smoothing: removes the staircase, keeps thin processes
MESH_LEVEL = 0.5  # marching-cubes level on the smoothed 0/1 mask


def bone_names(patient: Patient, tissue_map: TissueMap | None = None) -> list[str]:
    """Names in `patient.structure_names` whose tissue rule is bone (e.g. vertebrae_*, sacrum)."""
    tmap = tissue_map or TissueMap.load()
    return [name for name in patient.structure_names if tmap.tissue_of(name) == TISSUE_ID["bone"]]


def mask_mesh(
    mask: np.ndarray, affine: np.ndarray, offset: tuple[int, int, int] = (0, 0, 0), step: int = 1
) -> trimesh.Trimesh | None:
    """Closed surface of a boolean (I, J, K) `mask` whose voxel [0, 0, 0] is voxel `offset` of
    the grid with voxel-to-patient `affine` (4, 4); vertices in the patient frame.

    Marching cubes on the zero-padded, Gaussian-smoothed mask at level 0.5, without degenerate
    triangles (a vertex exactly on a grid point would otherwise make non-manifold edges); `step`
    > 1 coarsens the mesh. Faces wind counter-clockwise seen from outside (positive volume).
    None when the mask is too thin or small for its smoothed copy to reach the level anywhere.
    """
    pad = 2
    sub = ndimage.gaussian_filter(np.pad(mask.astype(np.float32), pad), _SMOOTH_SIGMA_VOXELS)
    if sub.max() <= MESH_LEVEL:
        return None
    verts, faces, _, _ = measure.marching_cubes(sub, level=MESH_LEVEL, step_size=step, allow_degenerate=False)
    verts += np.asarray(offset, float) - pad
    world = verts @ affine[:3, :3].T + affine[:3, 3]
    if np.linalg.det(affine[:3, :3]) > 0:  # skimage's winding faces inward in index space
        faces = faces[:, ::-1]
    # skimage already shares vertices; merging coincident ones (process=True) can pinch edges.
    return trimesh.Trimesh(world, faces, process=False)


def bone_meshes(patient: Patient, step: int = 1) -> dict[str, trimesh.Trimesh]:
    """One mesh per bone structure present in the volume (patient frame, metres).

    step: marching-cubes step in voxels (1 = full resolution). A structure too small or thin to
    give a surface (a few voxels cut by the field of view) is skipped with a warning.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise InputError(f"step: expected a positive integer voxel step, got {step!r}")
    boxes = ndimage.find_objects(patient.structures)  # boxes[sid - 1]: bounding slices of id sid
    meshes = {}
    for name in bone_names(patient):
        sid = patient.structure_names[name]
        if sid <= len(boxes) and boxes[sid - 1] is not None:
            box = boxes[sid - 1]
            mask = patient.structures[box] == sid
            mesh = mask_mesh(mask, patient.affine, tuple(s.start for s in box), step)
            if mesh is None:
                warnings.warn(
                    f"{patient.name} {name}: {int(mask.sum())} voxels are too few or too thin for a mesh; skipped",
                    stacklevel=2,
                )
            else:
                meshes[name] = mesh
    return meshes
