"""Automatic pedicle-screw plans from vertebra label masks: the phantom and TotalSegmentator alike.

One algorithm for every labelling where "vertebrae_Lx" covers the whole vertebra (no pedicle
labels), after REFERENCE section 7 ("Planning from masks"), per lumbar level with landmarks and
per side:

1. The vertebra's mask, cropped, becomes a signed distance field (metres, negative inside;
   `sim.surgery.distance.signed_distance`), read by trilinear interpolation.
2. Arch: the mask behind the body (the front 45 % of the AP extent, the cut of
   `sim.anatomy.landmarks`), split at the mid-sagittal plane (through the body centre, normal
   to the right axis), kept within the body's cranio-caudal extent (the pedicles' band).
3. Isthmus: per slab of the posterior axis behind the body (1 mm, or one voxel where coarser), the
   area of that side's arch; walking back from the body (no farther than where the laminae close
   the ring behind the canal), the isthmus is the smallest slab before the area grows by a fifth
   (the transverse process, articular processes and lamina widen the arch behind the pedicle).
   Each slab from the body to the isthmus offers a pivot, the middle of its deepest voxels: a
   big transverse process (L5) can shrink the area all the way back, hiding the isthmus.
4. Axis: through a pivot shifted by up to `SHIFT_M` across the axis and cranio-caudally, at a
   transverse angle inside the level's published range (`PLAN_TRANSVERSE_RANGE_DEG`) and a
   sagittal angle inside `SAGITTAL_RANGE_DEG`: the axis of greatest wall clearance, on a coarse
   grid to choose the pivot, then a fine one. Where many axes are equally clear to within the
   field's voxel noise, the centre of that set.
5. Entry: where the axis leaves the bone behind the pivot; the chord runs to where it leaves the
   bone in front (the anterior cortex, which must lie in front of the body centre); length 0.8
   chord; diameter min(0.8 isthmus width, 7.5 mm), the isthmus width being the narrowest chord of
   the bone across the axis in the transverse plane between the entry and the body.

Wall clearance: the least inside distance along the axis minus the screw radius, from entry +
radius + `ENTRY_ZONE_M` (where `sim.surgery.breach.ChannelBreach` starts counting for a square-on
entry) to the target; the entry cortex behind and the anterior cortex ahead are not walls (points
whose nearest cortex lies within 45 deg of the axis are left out where they are no breach).

Angles, in the vertebra's anatomical axes (`VertebraLandmarks.axes`): transverse_deg is the angle
between the axis's projection on the transverse plane and the anterior direction, positive when
the axis converges toward the midline as it runs anterior; sagittal_deg the angle of the axis to
the transverse plane, positive when it rises (cranially) as it runs anterior (Zindrick's sign).

Plans are computed once per prepared patient (numpy and scipy, not in the simulation step).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sim.anatomy.landmarks import LUMBAR, _body_centre
from sim.anatomy.patient import Patient, VertebraLandmarks

# Zindrick et al. (Spine 1987) mean transverse angles per level; the range is the mean +-7 deg, about
# +-1.5 standard deviations of their per-level spread.
TRANSVERSE_MEAN_DEG = {
    "vertebrae_L1": 11.0,
    "vertebrae_L2": 12.0,
    "vertebrae_L3": 14.0,
    "vertebrae_L4": 18.0,
    "vertebrae_L5": 30.0,
}
TRANSVERSE_TOLERANCE_DEG = 7.0
PLAN_TRANSVERSE_RANGE_DEG: dict[str, tuple[float, float]] = {
    level: (mean - TRANSVERSE_TOLERANCE_DEG, mean + TRANSVERSE_TOLERANCE_DEG)
    for level, mean in TRANSVERSE_MEAN_DEG.items()
}
# Zindrick's sagittal means lie within a few degrees of the endplate plane (+2 deg L1 to -1 deg L5).
SAGITTAL_RANGE_DEG = (-10.0, 10.0)
SHIFT_M = 2e-3  # how far the axis may pass from the isthmus pivot
MAX_DIAMETER_M = 7.5e-3  # the largest common lumbar screw
DIAMETER_FRACTION = 0.8  # screw diameter at most 70-80 % of the isthmus width
LENGTH_FRACTION = 0.8  # screw length: this fraction of the entry-to-anterior-cortex chord
ENTRY_ZONE_M = 1e-3  # until entry + radius + this the screw cuts the entry cortex (`ChannelBreach`'s default)
SIDES = {"left": -1.0, "right": 1.0}
_SLAB_M = 1e-3  # slabs along the posterior axis, or one voxel where coarser
_SEARCH_DEPTH_M = 0.04  # slabs searched behind the body: the pedicle lies well within this
_MIDLINE_M = 3e-3  # bone this close to the mid-sagittal plane closes the canal (or is the body)
_WIDEN = 1.2  # an arch slab this much larger than the smallest so far is past the pedicle
_BACK_M, _FRONT_M = 0.045, 0.075  # the axis is sampled this far behind and in front of the pivot
_AXIAL_COS = np.cos(np.deg2rad(45.0))  # cortex within 45 deg of the axis is the entry or anterior cortex
_GRID = (1.0, 2.0, 1e-3)  # search steps: transverse deg, sagittal deg, shifts m
_SCREEN = (2.0, 5.0, 2e-3)  # the coarser steps that choose among the pivots
_PLATEAU = 0.15  # axes this many voxels less clear than the best are as good: voxel noise
_CHORD_M = 0.025  # half length of the chords across the axis that measure the isthmus


@dataclass(eq=False)  # arrays: compare fields explicitly
class ScrewPlan:
    """A planned pedicle screw, patient frame, metres (see the module docstring for the angles).

    level: e.g. "vertebrae_L3"; side: "left" or "right". entry (3,): where the axis enters the
    posterior bone surface; target (3,): entry + axis * length_m, the screw's tip. radius_m: half
    the screw diameter min(0.8 isthmus_width_m, 7.5 mm). isthmus_width_m: the pedicle's width at
    its isthmus across the axis in the transverse plane. clearance_m: the least distance from the
    screw's surface to a cortical wall between entry + radius + ENTRY_ZONE_M and the target
    (negative: even the best axis breaches).
    """

    level: str
    side: str
    entry: np.ndarray
    target: np.ndarray
    length_m: float
    radius_m: float
    isthmus_width_m: float
    transverse_deg: float
    sagittal_deg: float
    clearance_m: float

    @property
    def axis(self) -> np.ndarray:
        """(3,) unit direction from the entry to the target."""
        d = self.target - self.entry
        return d / np.linalg.norm(d)


class _Field:
    """Signed distance field (m, negative inside) of one label on a crop of a patient's grid."""

    def __init__(self, patient: Patient, sid: int) -> None:
        # Deferred: sim.surgery.distance imports sim.anatomy, whose package imports this module.
        from sim.surgery.distance import bounding_box, signed_distance

        box, lo = bounding_box(patient.structures == sid, grow=2)
        self.mask = patient.structures[box] == sid
        self.spacing = patient.spacing
        self.phi = signed_distance(self.mask, self.spacing)
        self.to_voxel = np.linalg.inv(patient.affine)[:3]
        self.to_voxel[:, 3] -= lo
        self.to_patient = patient.affine[:3].copy()
        self.to_patient[:, 3] += patient.affine[:3, :3] @ lo

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(...) field values at points (..., 3), patient frame; beyond the crop its border (outside)."""
        ijk = points @ self.to_voxel[:, :3].T + self.to_voxel[:, 3]
        flat = ijk.reshape(-1, 3).T
        return ndimage.map_coordinates(self.phi, flat, order=1, mode="nearest").reshape(points.shape[:-1])

    def inside_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) patient-frame centres of the label's voxels and (n,) their field values."""
        idx = np.argwhere(self.mask)
        return idx @ self.to_patient[:, :3].T + self.to_patient[:, 3], self.phi[self.mask]


@dataclass
class _Level:
    """One vertebra prepared for planning: its landmarks, field, voxel centres points (n, 3)
    (patient frame, m) with field values phi (n,) and coordinates q (n, 3) along its axes (cranial,
    posterior, right; m from its centre); the body's back `cut` along posterior (m); the body's
    cranio-caudal band (2,) (m); the slab thickness (m), each voxel's slab index behind the body
    (n,), and the first slab where the arch closes behind the canal (the laminae; None if never)."""

    lm: VertebraLandmarks
    field: _Field
    points: np.ndarray
    phi: np.ndarray
    q: np.ndarray
    cut: float
    band: np.ndarray
    slab: float
    slab_idx: np.ndarray
    closure: int | None


def _level(patient: Patient, lm: VertebraLandmarks, sid: int) -> _Level:
    """The `_Level` of vertebra `lm`, label id `sid`, of `patient`."""
    field = _Field(patient, sid)
    points, phi = field.inside_points()
    q = (points - lm.centre) @ lm.axes.T
    body_centre, cut, _ = _body_centre(points, lm.axes[1])
    cut += (body_centre - lm.centre) @ lm.axes[1]  # `_body_centre` measures from its own centroid
    band = np.percentile(q[q[:, 1] < cut, 0], [5.0, 95.0])  # the body's height, where the pedicles attach
    slab = max(_SLAB_M, float(np.max(field.spacing)))
    slab_idx = np.floor((q[:, 1] - cut) / slab).astype(int)
    # Walking back from the body the midline first opens (the canal), then closes again (the laminae).
    in_band = (slab_idx >= 0) & (q[:, 0] >= band[0]) & (q[:, 0] <= band[1])
    midline = in_band & (np.abs(q[:, 2]) < max(_MIDLINE_M, float(np.max(field.spacing))))
    n_slabs = int(np.ceil(_SEARCH_DEPTH_M / slab))
    bone_at_midline = np.bincount(slab_idx[midline], minlength=n_slabs)[:n_slabs] > 0
    closes = np.flatnonzero(bone_at_midline & (np.cumsum(~bone_at_midline) > 0))
    closure = int(closes[0]) if len(closes) else None
    return _Level(lm, field, points, phi, q, float(cut), band, slab, slab_idx, closure)


def _isthmus(level: _Level, side: float) -> tuple[list[np.ndarray], float] | str:
    """Pivots (3,) of the slabs from the body back to the pedicle isthmus on `side`, and the
    isthmus's inscribed half width (m); or why there are none.

    The isthmus slab: walking back from the body through the side's arch (within the band, before
    the laminae close the ring), the slab of least area before the area grows by `_WIDEN`. A big
    transverse process (L5) can shrink the area all the way to the laminae, so the slabs in front
    of it are candidates too (the clearance of their best axes decides). A slab's pivot is the mean
    of its deepest voxels.
    """
    q = level.q
    arch = (level.slab_idx >= 0) & (side * q[:, 2] > 0) & (q[:, 0] >= level.band[0]) & (q[:, 0] <= level.band[1])
    if not arch.any():
        return "no arch on that side"
    end = level.closure if level.closure is not None else int(np.ceil(_SEARCH_DEPTH_M / level.slab))
    counts = np.bincount(level.slab_idx[arch], minlength=end)[:end]
    best, best_j = np.inf, -1
    for j, count in enumerate(counts):
        if count == 0:  # no bone of this side in the band: a gap between coarse voxels
            continue
        if count < best:
            best, best_j = count, j
        elif count > _WIDEN * best:
            break
    if best_j < 0:
        return "no arch between the body and the laminae"
    pivots, spacing = [], float(np.min(level.field.spacing))
    for j in np.flatnonzero(counts[: best_j + 1]):
        in_slab = arch & (level.slab_idx == j)
        depth = -level.phi[in_slab]
        pivot = level.points[in_slab][depth >= depth.max() - 0.5 * spacing].mean(0)
        if level.field(pivot) >= 0:  # deepest voxels apart on a bent cross-section: the deepest one alone
            pivot = level.points[in_slab][np.argmax(depth)]
        pivots.append(pivot)
    return pivots, float(-level.phi[arch & (level.slab_idx == best_j)].min())


def _frame(lm: VertebraLandmarks, side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cranial, anterior, medial) unit vectors (3,) of vertebra `lm` on `side`."""
    cc, posterior, right = lm.axes
    return cc, -posterior, -side * right


def _directions(tau: np.ndarray, sigma: np.ndarray, frame: tuple[np.ndarray, ...]) -> np.ndarray:
    """(C, 3) unit axes at transverse angles tau (C,) and sagittal angles sigma (C,) (radians)."""
    cc, anterior, medial = frame
    h = np.cos(tau)[:, None] * anterior + np.sin(tau)[:, None] * medial
    return np.cos(sigma)[:, None] * h + np.sin(sigma)[:, None] * cc


def _crossing(s: np.ndarray, phi: np.ndarray, out_idx: np.ndarray, in_idx: np.ndarray) -> np.ndarray:
    """(C,) parameter of the zero crossing between samples out_idx and in_idx (C,) of lines phi (C, S)."""
    rows = np.arange(len(phi))
    a, b = phi[rows, out_idx], phi[rows, in_idx]
    t = a / np.where(a != b, a - b, 1.0)
    return s[out_idx] + t * (s[in_idx] - s[out_idx])


@dataclass
class _Lines:
    """Evaluated candidate axes: pivots (C, 3), directions (C, 3), entry / exit / target
    parameters (C,) along them (m from the pivot), wall clearances (C,) m (-inf: no valid axis)."""

    pivot: np.ndarray
    direction: np.ndarray
    entry: np.ndarray
    exit: np.ndarray
    target: np.ndarray
    clearance: np.ndarray


def _evaluate(
    field: _Field, pivot: np.ndarray, direction: np.ndarray, radius: float, lm: VertebraLandmarks, cut: float
) -> _Lines:
    """Entry, chord, target and wall clearance of the axes through pivot (C, 3) along direction (C, 3).

    Wall clearance: the least inside distance minus `radius` from entry + radius + ENTRY_ZONE_M to
    the target, leaving out points whose nearest cortex lies within 45 deg of the axis (the entry
    cortex behind, the anterior cortex ahead; the directional derivative of the field shows it)
    where they are no breach anyway. An axis is valid where the pivot is in bone, the entry is
    behind the body and the chord ends in front of the body centre.
    """
    step = float(min(5e-4, 0.5 * np.min(field.spacing)))
    s = np.arange(-_BACK_M, _FRONT_M + step / 2, step)
    k0 = int(np.argmin(np.abs(s)))
    phi = field(pivot[:, None] + direction[:, None] * s[None, :, None])  # (C, S)
    outside = phi >= 0
    k = np.arange(len(s))
    behind = np.where(outside & (k < k0), k, -1).max(1)
    ahead = np.where(outside & (k > k0), k, len(s)).min(1)
    valid = ~outside[:, k0] & (behind >= 0) & (ahead < len(s))
    behind, ahead = np.clip(behind, 0, len(s) - 2), np.clip(ahead, 1, len(s) - 1)
    entry = _crossing(s, phi, behind, behind + 1)
    exit_ = _crossing(s, phi, ahead, ahead - 1)
    target = entry + LENGTH_FRACTION * (exit_ - entry)
    posterior = lm.axes[1]
    entry_q = ((pivot - lm.centre) @ posterior) + entry * (direction @ posterior)
    exit_q = ((pivot - lm.centre) @ posterior) + exit_ * (direction @ posterior)
    valid &= (entry_q > cut) & (exit_q < 0.0)

    depth = -phi
    slope = np.gradient(phi, step, axis=1)
    zone = (s[None] >= (entry + radius + ENTRY_ZONE_M)[:, None]) & (s[None] <= target[:, None])
    wall = zone & ((np.abs(slope) < _AXIAL_COS) | (depth < radius))
    counted = np.where(wall.any(1, keepdims=True), wall, zone)
    clearance = np.where(counted, depth - radius, np.inf).min(1)
    valid &= zone.any(1)
    return _Lines(pivot, direction, entry, exit_, target, np.where(valid, clearance, -np.inf))


def _search(
    field: _Field,
    pivot: np.ndarray,
    radius: float,
    lm: VertebraLandmarks,
    side: float,
    cut: float,
    tau_range: tuple[float, float],
    grid_steps: tuple[float, float, float],
) -> _Lines | None:
    """The axis of greatest wall clearance over transverse angle, sagittal angle and the pivot's
    shift across the axis and cranio-caudally (a grid of `grid_steps`: deg, deg, m), or None
    without a valid axis.

    The clearance is flat to within the field's voxel noise over a few degrees and a millimetre or
    so (a screw narrower than the pedicle fits many ways), so the axis returned is the centre of
    all axes within `_PLATEAU` voxels of the best one, rather than whichever the noise favours.
    """
    frame = _frame(lm, side)
    cc, _, medial = frame
    lo = np.array([np.deg2rad(tau_range[0]), np.deg2rad(SAGITTAL_RANGE_DEG[0]), -SHIFT_M, -SHIFT_M])
    hi = np.array([np.deg2rad(tau_range[1]), np.deg2rad(SAGITTAL_RANGE_DEG[1]), SHIFT_M, SHIFT_M])
    tau_mid = 0.5 * (lo[0] + hi[0])
    across = np.cos(tau_mid) * medial - np.sin(tau_mid) * frame[1]  # in the transverse plane, across the axis

    def evaluate(params: np.ndarray) -> _Lines:
        pivots = pivot + params[:, 2:3] * across + params[:, 3:4] * cc
        return _evaluate(field, pivots, _directions(params[:, 0], params[:, 1], frame), radius, lm, cut)

    steps = np.array([np.deg2rad(grid_steps[0]), np.deg2rad(grid_steps[1]), grid_steps[2], grid_steps[2]])
    axes_1d = [np.linspace(a, b, int(round((b - a) / step)) + 1) for a, b, step in zip(lo, hi, steps)]
    grid = np.stack(np.meshgrid(*axes_1d, indexing="ij"), -1).reshape(-1, 4)
    lines = evaluate(grid)
    best = float(lines.clearance.max())
    if not np.isfinite(best):
        return None
    plateau = lines.clearance >= best - _PLATEAU * float(np.min(field.spacing))
    centre = evaluate(grid[plateau].mean(0, keepdims=True))
    if centre.clearance[0] >= best - _PLATEAU * float(np.min(field.spacing)):
        return centre
    # A plateau that is not convex: its member nearest its centre (in grid steps).
    gap = np.linalg.norm((grid[plateau] - grid[plateau].mean(0)) / steps, axis=1)
    i = np.flatnonzero(plateau)[np.argmin(gap)]
    return _Lines(*(getattr(lines, f)[i : i + 1] for f in _Lines.__dataclass_fields__))


def _isthmus_width(field: _Field, lines: _Lines, lm: VertebraLandmarks, cut: float, radius: float) -> float:
    """Narrowest chord (m) of the bone across the axis in the transverse plane, over the axis from
    entry + radius + ENTRY_ZONE_M to the body's back (at least at one point)."""
    p, d = lines.pivot[0], lines.direction[0]
    posterior = lm.axes[1]
    step = float(min(2.5e-4, 0.25 * np.min(field.spacing)))
    start = lines.entry[0] + radius + ENTRY_ZONE_M
    body = (cut - (p - lm.centre) @ posterior) / (d @ posterior)  # where the axis crosses the body's back
    along = np.arange(start, max(body, start) + step / 2, step)
    across = np.cross(lm.axes[0], d)
    across /= np.linalg.norm(across)
    v = np.arange(-_CHORD_M, _CHORD_M + step / 2, step)
    centres = p + along[:, None] * d
    phi = field(centres[:, None] + v[None, :, None] * across)  # (K, V)
    outside = phi >= 0
    k0 = len(v) // 2
    keep = ~outside[:, k0]
    if not keep.any():
        return float("nan")
    phi, outside = phi[keep], outside[keep]
    idx = np.arange(len(v))
    lo = np.where(outside & (idx < k0), idx, -1).max(1)
    hi = np.where(outside & (idx > k0), idx, len(v)).min(1)
    closed = (lo >= 0) & (hi < len(v))  # chords longer than 2 _CHORD_M are no pedicle
    if not closed.any():
        return float("nan")
    lo, hi, phi = lo[closed], hi[closed], phi[closed]
    width = _crossing(v, phi, hi, hi - 1) - _crossing(v, phi, lo, lo + 1)
    return float(width.min())


def _angles(direction: np.ndarray, lm: VertebraLandmarks, side: float) -> tuple[float, float]:
    """(transverse, sagittal) angles in degrees of unit `direction` (3,) (module docstring)."""
    cc, anterior, medial = _frame(lm, side)
    sagittal = np.degrees(np.arcsin(np.clip(direction @ cc, -1.0, 1.0)))
    transverse = np.degrees(np.arctan2(direction @ medial, direction @ anterior))
    return float(transverse), float(sagittal)


def _plan_side(level: _Level, side_name: str) -> ScrewPlan | str:
    """The plan of one side of `level`, or why there is none."""
    side, lm, field = SIDES[side_name], level.lm, level.field
    found = _isthmus(level, side)
    if isinstance(found, str):
        return found
    pivots, half_width = found
    radius = min(DIAMETER_FRACTION * 2.0 * half_width, MAX_DIAMETER_M) / 2  # until the width is measured
    tau_range = PLAN_TRANSVERSE_RANGE_DEG[lm.name]
    screened = [_search(field, p, radius, lm, side, level.cut, tau_range, _SCREEN) for p in pivots]
    clearances = [-np.inf if lines is None else lines.clearance[0] for lines in screened]
    if not np.isfinite(max(clearances)):
        return "no axis through the isthmus reaches the anterior body"
    pivot = pivots[int(np.argmax(clearances))]
    lines = _search(field, pivot, radius, lm, side, level.cut, tau_range, _GRID)
    width = _isthmus_width(field, lines, lm, level.cut, radius)
    if not np.isfinite(width) or width <= 0:
        return "no closed cross-section across the axis"
    radius = min(DIAMETER_FRACTION * width, MAX_DIAMETER_M) / 2
    final = _evaluate(field, lines.pivot, lines.direction, radius, lm, level.cut)  # clearance at the final radius
    p, d = final.pivot[0], final.direction[0]
    transverse, sagittal = _angles(d, lm, side)
    return ScrewPlan(
        level=lm.name,
        side=side_name,
        entry=p + final.entry[0] * d,
        target=p + final.target[0] * d,
        length_m=float(final.target[0] - final.entry[0]),
        radius_m=float(radius),
        isthmus_width_m=width,
        transverse_deg=transverse,
        sagittal_deg=sagittal,
        clearance_m=float(final.clearance[0]),
    )


def screw_plans(patient: Patient) -> dict[str, ScrewPlan]:
    """Pedicle-screw plans "vertebrae_Lx/left" and ".../right" of every lumbar level with landmarks.

    Needs `patient.landmarks` (`sim.anatomy.derive`). A side without a usable axis (no arch there,
    a mask fragment) gets no plan and a warning naming it.
    """
    plans = {}
    for name in LUMBAR:
        lm = patient.landmarks.get(name)
        sid = patient.structure_names.get(name)
        if lm is None or sid is None:
            continue
        level = _level(patient, lm, sid)
        for side_name in SIDES:
            plan = _plan_side(level, side_name)
            if isinstance(plan, str):
                warnings.warn(f"{patient.name} {name} {side_name}: {plan}; no screw plan", stacklevel=2)
                continue
            plans[f"{name}/{side_name}"] = plan
    return plans


def plan_report(plans: dict[str, ScrewPlan]) -> list[dict]:
    """One row per plan: level, side, transverse_deg, sagittal_deg, isthmus_width_mm,
    screw_diameter_mm, length_mm, clearance_mm, within_range (both angles inside the level's
    published range and SAGITTAL_RANGE_DEG)."""
    rows = []
    for plan in plans.values():
        lo, hi = PLAN_TRANSVERSE_RANGE_DEG.get(plan.level, (-np.inf, np.inf))
        rows.append(
            {
                "level": plan.level,
                "side": plan.side,
                "transverse_deg": plan.transverse_deg,
                "sagittal_deg": plan.sagittal_deg,
                "isthmus_width_mm": plan.isthmus_width_m * 1e3,
                "screw_diameter_mm": 2 * plan.radius_m * 1e3,
                "length_mm": plan.length_m * 1e3,
                "clearance_mm": plan.clearance_m * 1e3,
                "within_range": bool(
                    lo - 1e-9 <= plan.transverse_deg <= hi + 1e-9
                    and SAGITTAL_RANGE_DEG[0] - 1e-9 <= plan.sagittal_deg <= SAGITTAL_RANGE_DEG[1] + 1e-9
                ),
            }
        )
    return rows
