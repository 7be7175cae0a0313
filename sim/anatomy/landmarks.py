"""Lumbar vertebra landmarks: body centres, anatomical axes and standard ultrasound planes.

Works on any labelling where "vertebrae_Lx" covers the whole vertebra (body and posterior
elements): the procedural phantom and TotalSegmentator output alike. Everything is computed in
the patient frame (metres) from voxel centres, so any affine works.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from sim.anatomy.patient import Patient, Plane, VertebraLandmarks

LUMBAR = ("vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4", "vertebrae_L5")
# Cranio-caudal order (top first) of the levels used as neighbours of the lumbar ones.
_COLUMN = ("vertebrae_T11", "vertebrae_T12", *LUMBAR, "vertebrae_L6", "vertebrae_S1")
_BODY_FRACTION = 0.45  # the body is the front 45% of a vertebra's AP extent (35 of ~75 mm)
_LAMINA_BAND = (0.3, 0.6)  # laminae: this fraction of the way from the body's back to the tip
_MIN_CORD_SPAN_M = 0.015  # cord voxels must span this along z to give a usable axis
# A lumbar vertebra is ~60 cm^3: ~900 voxels even at 4 mm. Fewer is a fragment cut by the field of
# view, whose body, axes and laminae cannot be told apart.
MIN_VERTEBRA_VOXELS = 100


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _voxel_points(patient: Patient, sid: int, box: tuple[slice, ...]) -> np.ndarray:
    """(n, 3) patient-frame centres (m) of the voxels labelled `sid` inside `box`."""
    idx = np.argwhere(patient.structures[box] == sid) + [s.start for s in box]
    return idx @ patient.affine[:3, :3].T + patient.affine[:3, 3]


def _principal_axis(points: np.ndarray) -> np.ndarray:
    """Unit direction of largest spread of (n, 3) points, pointing superior (+z)."""
    _, _, vt = np.linalg.svd(points - points.mean(0), full_matrices=False)
    return vt[0] if vt[0, 2] >= 0 else -vt[0]


def _cranio_caudal(
    name: str, points: np.ndarray, centroids: dict[str, np.ndarray], cord: np.ndarray | None
) -> np.ndarray:
    """Superior-pointing unit axis of vertebra `name` with voxel centres `points` (n, 3).

    The spinal cord next to the vertebra when it spans enough of it; otherwise the central
    difference of neighbouring vertebra centroids; otherwise the patient's +z.
    """
    if cord is not None:
        z_lo, z_hi = points[:, 2].min(), points[:, 2].max()
        near = cord[(cord[:, 2] >= z_lo) & (cord[:, 2] <= z_hi)]
        if len(near) >= 3 and np.ptp(near[:, 2]) >= _MIN_CORD_SPAN_M:
            return _principal_axis(near)
    i = _COLUMN.index(name)
    above = next((centroids[n] for n in reversed(_COLUMN[:i]) if n in centroids), centroids[name])
    below = next((centroids[n] for n in _COLUMN[i + 1 :] if n in centroids), centroids[name])
    if np.linalg.norm(above - below) > 0:
        return _unit(above - below)
    return np.array([0.0, 0.0, 1.0])


def _body_centre(points: np.ndarray, posterior: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Body centroid (3,), and the body's back (cut) and the spinous tip, in metres along
    `posterior` from that centroid."""
    t = points @ posterior
    front, tip = np.percentile(t, [0.5, 99.5])
    cut = front + _BODY_FRACTION * (tip - front)
    centre = points[t < cut].mean(0)
    return centre, cut - centre @ posterior, tip - centre @ posterior


def _axes(points: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body centre (3,) and axes (3, 3) rows (cranio-caudal, posterior, right) of a vertebra.

    Posterior starts as the patient's -y and is refined once toward the spinous process (the
    far back of the mask), which follows the vertebra's axial rotation.
    """
    down = np.array([0.0, -1.0, 0.0])
    posterior = _unit(down - (down @ cc) * cc)
    centre, _, _ = _body_centre(points, posterior)
    t = (points - centre) @ posterior
    back = points[t > np.percentile(t, 70)].mean(0) - centre
    posterior = _unit(back - (back @ cc) * cc)
    centre, _, _ = _body_centre(points, posterior)
    return centre, np.stack([cc, posterior, np.cross(cc, posterior)])


def _inside_centre(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """`centre`, or the nearest body voxel if the centroid misses the mask (hollow or odd masks)."""
    d = np.linalg.norm(points - centre, axis=1)
    return centre if d.min() <= 0.5 * _voxel_size(points) else points[np.argmin(d)]


def _voxel_size(points: np.ndarray) -> float:
    """Smallest non-zero coordinate step among voxel centres (m)."""
    steps = [np.diff(np.unique(points[:, a])) for a in range(3)]
    return float(min(s[s > 0].min() for s in steps if np.any(s > 0)))


def _lamina(points: np.ndarray, centre: np.ndarray, axes: np.ndarray, side: float) -> np.ndarray | None:
    """Centroid (3,) of the lamina on `side` (+1 right, -1 left), or None if the mask has none.

    Laminae are the posterior-element voxels between the body and the spinous tip (a band of
    the AP extent), off the midline and medial to the transverse processes.
    """
    q = (points - centre) @ axes.T  # (n, 3): cranio-caudal, posterior, right
    _, cut, tip = _body_centre(points, axes[1])
    body = q[:, 1] < cut
    half_width = np.percentile(np.abs(q[body, 2]), 99)
    lo, hi = cut + np.array(_LAMINA_BAND) * (tip - cut)
    lateral = side * q[:, 2]
    sel = (q[:, 1] >= lo) & (q[:, 1] <= hi) & (lateral >= 0.004) & (lateral <= 0.5 * half_width)
    return points[sel].mean(0) if sel.any() else None


def _planes(centre: np.ndarray, axes: np.ndarray, laminae: dict[str, np.ndarray]) -> dict[str, Plane]:
    """Standard planes; each (u, normal, v) is a right-handed frame (u x normal = v).

    transverse: normal superior, v anterior (beam from the back), so u points to the patient's
    left (image left = patient right, the usual transverse display). parasagittal_*: normal to
    the patient's right, u superior, v anterior, through the lamina on that side.
    """
    cc, posterior, right = axes
    anterior = -posterior
    planes = {"transverse": Plane(centre.copy(), cc.copy(), -right, anterior)}
    for side, origin in laminae.items():
        planes[f"parasagittal_{side}"] = Plane(origin, right.copy(), cc.copy(), anterior.copy())
    return planes


def vertebra_landmarks(patient: Patient) -> dict[str, VertebraLandmarks]:
    """Landmarks of each lumbar vertebra (L1-L5) labelled and non-empty in `patient`.

    Centre: centroid of the vertebral body (the front of the mask along the AP axis). Axes rows:
    cranio-caudal (superior), antero-posterior (posterior), left-right (right); right-handed.
    Planes: "transverse", "parasagittal_left", "parasagittal_right" (see `_planes`). Metres.
    A vertebra with fewer than MIN_VERTEBRA_VOXELS voxels or whose mask shows no laminae is
    skipped with a warning.
    """
    names = patient.structure_names
    boxes = ndimage.find_objects(patient.structures)

    def points_of(name: str) -> np.ndarray | None:
        sid = names.get(name)
        if sid is None or sid > len(boxes) or boxes[sid - 1] is None:
            return None
        return _voxel_points(patient, sid, boxes[sid - 1])

    column = {n: pts for n in _COLUMN if (pts := points_of(n)) is not None}
    centroids = {n: pts.mean(0) for n, pts in column.items()}
    cord = points_of("spinal_cord")
    out = {}
    for name in LUMBAR:
        if name not in column:
            continue
        points = column[name]
        if len(points) < MIN_VERTEBRA_VOXELS:
            warnings.warn(
                f"{patient.name} {name}: {len(points)} voxels, fewer than the {MIN_VERTEBRA_VOXELS} landmarks need; "
                "skipped",
                stacklevel=2,
            )
            continue
        cc = _cranio_caudal(name, points, centroids, cord)
        centre, axes = _axes(points, cc)
        centre = _inside_centre(points, centre)
        laminae = {side: _lamina(points, centre, axes, sign) for side, sign in (("left", -1.0), ("right", 1.0))}
        if any(v is None for v in laminae.values()):
            warnings.warn(f"{patient.name} {name}: no laminae found in the mask; landmarks skipped", stacklevel=2)
            continue
        out[name] = VertebraLandmarks(name, centre, axes, _planes(centre, axes, laminae))
    return out
