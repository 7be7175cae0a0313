"""The body surface: a height map of the back's skin for placing a probe, and a body mesh.

Both need an axis-aligned patient grid (affine 3x3 block diagonal and positive), which is what
the phantom produces and what loaders bring every input to.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from skimage import measure

from sim.anatomy.patient import Patient, SkinSurface
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError

_HEIGHT_SMOOTH_VOXELS = 1.0  # Gaussian sigma that turns the voxel staircase into a smooth skin
_BODY_MESH_MM = 4.0  # voxel size of the body mesh


def _axis_aligned_spacing(patient: Patient) -> np.ndarray:
    """(3,) voxel size (m) of an axis-aligned grid; raise `InputError` for oblique affines."""
    block = patient.affine[:3, :3]
    diag = np.diag(block)
    if np.any(diag <= 0) or np.abs(block - np.diag(diag)).max() > 1e-6 * diag.min():
        raise InputError(
            f"patient '{patient.name}' affine: expected an axis-aligned RAS grid (positive diagonal 3x3 block; "
            f"resample oblique scans first), got {block.tolist()}"
        )
    return diag


def _smooth_nan(h: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a height map that ignores and keeps its NaN cells."""
    valid = np.isfinite(h)
    num = ndimage.gaussian_filter(np.where(valid, h, 0.0), sigma)
    den = ndimage.gaussian_filter(valid.astype(float), sigma)
    return np.where(valid, num / np.maximum(den, 1e-12), np.nan)


def _normals(y: np.ndarray, dx: float, dz: float) -> np.ndarray:
    """(A, B, 3) unit outward (posterior) normals of the surface y = h(x, z)."""
    # The skin is {y - h(x, z) = 0} with the body at larger y: outward is (h_x, -1, h_z).
    # Filling NaN cells with their nearest valid height makes rim gradients one-sided, not NaN.
    valid = np.isfinite(y)
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    hx, hz = np.gradient(y[tuple(nearest)], dx, dz)
    n = np.stack([hx, -np.ones_like(y), hz], axis=-1)
    n[~valid] = np.nan
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def skin_surface(patient: Patient, spacing_m: float | None = None) -> SkinSurface:
    """Height map of the back's skin over the patient's (x, z) plane.

    For each (x, z) column the most posterior body voxel's outer face gives y, smoothed to
    sub-voxel accuracy; columns that miss the body are NaN. `spacing_m` (metres) resamples the
    map to that grid step; by default it keeps the volume's x and z spacing. Normals point
    outward (posterior, roughly -y) and come from the height map's gradient.
    """
    spacing = _axis_aligned_spacing(patient)
    if spacing_m is not None and not (np.isfinite(spacing_m) and spacing_m > 0):
        raise InputError(f"spacing_m: expected a positive grid step in metres, got {spacing_m!r}")
    body = patient.tissue != TISSUE_ID["air"]
    hit = body.any(axis=1)
    first = np.argmax(body, axis=1).astype(float)  # (I, K) first body voxel along +y
    y0 = patient.affine[1, 3]
    y = np.where(hit, y0 + (first - 0.5) * spacing[1], np.nan)
    y = _smooth_nan(y, _HEIGHT_SMOOTH_VOXELS)
    x0, z0 = float(patient.affine[0, 3]), float(patient.affine[2, 3])
    native = SkinSurface(x0, z0, float(spacing[0]), float(spacing[2]), y, _normals(y, spacing[0], spacing[2]))
    if spacing_m is None:
        return native
    xs = np.arange(x0, x0 + (y.shape[0] - 1) * spacing[0] + 1e-12, spacing_m)
    zs = np.arange(z0, z0 + (y.shape[1] - 1) * spacing[2] + 1e-12, spacing_m)
    gx, gz = np.meshgrid(xs, zs, indexing="ij")
    point, _ = skin_point(native, gx, gz)
    return SkinSurface(
        x0, z0, float(spacing_m), float(spacing_m), point[..., 1], _normals(point[..., 1], spacing_m, spacing_m)
    )


def skin_point(surface: SkinSurface, x: np.ndarray | float, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Skin point and outward normal above (x, z), bilinear in the height map.

    x, z: metres, any broadcastable shapes S. Returns point (*S, 3) and unit normal (*S, 3);
    both are NaN where (x, z) lies off the map or next to a column that misses the body.
    """
    x, z = np.broadcast_arrays(np.asarray(x, float), np.asarray(z, float))
    A, B = surface.y.shape
    fa = (x - surface.x0) / surface.dx
    fb = (z - surface.z0) / surface.dz
    off = ~((fa >= 0) & (fa <= A - 1) & (fb >= 0) & (fb <= B - 1))
    a0 = np.clip(np.floor(fa), 0, A - 2).astype(int)
    b0 = np.clip(np.floor(fb), 0, B - 2).astype(int)
    ta, tb = (fa - a0)[..., None], (fb - b0)[..., None]
    field = np.concatenate([surface.y[..., None], surface.normal], axis=-1)  # (A, B, 4)
    v = (
        field[a0, b0] * (1 - ta) * (1 - tb)
        + field[a0 + 1, b0] * ta * (1 - tb)
        + field[a0, b0 + 1] * (1 - ta) * tb
        + field[a0 + 1, b0 + 1] * ta * tb
    )
    v[off] = np.nan
    point = np.stack([x, v[..., 0], z], axis=-1)
    point[off] = np.nan
    normal = v[..., 1:] / np.linalg.norm(v[..., 1:], axis=-1, keepdims=True)
    return point, normal


def body_mesh(patient: Patient) -> trimesh.Trimesh:
    """Closed surface of the non-air body (patient frame, metres), on a ~4 mm grid, lightly smoothed."""
    spacing = _axis_aligned_spacing(patient)
    factor = np.maximum(1, np.round(_BODY_MESH_MM * 1e-3 / spacing).astype(int))
    body = (patient.tissue != TISSUE_ID["air"]).astype(np.float32)
    # Block means give an occupancy on the coarse grid, lightly blurred; zero padding closes the mesh.
    n = np.array(body.shape) // factor
    coarse = body[: n[0] * factor[0], : n[1] * factor[1], : n[2] * factor[2]]
    coarse = coarse.reshape(n[0], factor[0], n[1], factor[1], n[2], factor[2]).mean(axis=(1, 3, 5))
    coarse = ndimage.gaussian_filter(np.pad(coarse, 1), 0.5)
    if coarse.max() <= 0.5:
        raise InputError(
            f"patient '{patient.name}' body: expected a body spanning "
            f"several {_BODY_MESH_MM:g} mm mesh cells along each axis, "
            f"got {int(body.sum())} body voxels in a {patient.shape} grid"
        )
    verts, faces, _, _ = measure.marching_cubes(coarse, level=0.5, allow_degenerate=False)
    # Coarse voxel c (after the pad) covers fine voxels (c - 1) * f .. (c - 1) * f + f - 1.
    fine = (verts - 1) * factor + (factor - 1) / 2
    world = fine @ patient.affine[:3, :3].T + patient.affine[:3, 3]
    # skimage already shares vertices; merging coincident ones (process=True) can pinch edges.
    mesh = trimesh.Trimesh(world, faces[:, ::-1], process=False)
    trimesh.smoothing.filter_taubin(mesh, iterations=5)
    return mesh
