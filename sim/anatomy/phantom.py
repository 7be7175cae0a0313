"""Procedural lumbar-spine phantom: a prone torso with T12-S1, discs, canal, muscles and organs.

The phantom lives in the RAS patient frame (+x right, +y anterior, +z superior). The L3 body
centre is the origin, so the back skin lies at negative y and a probe on the back looks along +y.
Geometry is laid out in millimetres from a table of nominal vertebra sizes, randomised per seed,
and rasterised primitive by primitive inside each primitive's bounding box (vectorised numpy).

Units: every `*_mm` value is millimetres, `*_deg` degrees; the returned `Patient` uses metres.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from sim.anatomy.patient import Patient
from sim.anatomy.tissue_map import TissueMap
from sim.anatomy.tissues import TISSUE_CLASSES
from sim.errors import InputError, check_keys

Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomParams:
    """Randomisation ranges of the phantom. Each `(low, high)` range is sampled uniformly once
    per patient; equal ends fix the value.

    torso_half_width_mm / torso_half_depth_mm: semi-axes of the torso cross-section (x and y).
    fat_mm: subcutaneous fat thickness, skin shell included.
    muscle_mm: muscle between the fat and the spinous-process tips (also the abdominal wall).
        Spinous tips therefore lie `fat_mm + muscle_mm` under the back skin at L3.
    vertebra_scale: global size factor of all vertebrae (nominal lumbar body 46 x 34 x 27 mm).
    vertebra_jitter: extra per-vertebra size factor, uniform in +-jitter (fraction).
    disc_scale: factor on the nominal disc heights (7-11 mm).
    lordosis_deg: angle between the L1 and S1 upper endplates (sagittal curve, apex at L3).
    back_curve: how much of that curve the back skin follows (1: parallel to the spine; 0: a flat
        back, as a supine patient's on the CT table, over which the planes of L1 and L5 lean from
        the skin normal by about half the lordosis). The skin keeps at least half the L3 cover
        (`fat_mm + muscle_mm`) over every spinous tip.
    rotation_deg: per-vertebra random rotation about each axis, uniform in +-rotation_deg.
    organ_scale: size factor of liver and kidneys.
    ct_noise_hu: standard deviation of the Gaussian CT noise (HU).
    margin_mm: soft tissue/air margin around the torso and beyond T12 and S1.
    fat_septa / muscle_septa: the fraction (0-0.3) of fat / muscle voxels that are fibrous septa
        (class fascia, `_septa`): the connective-tissue walls between fat lobules, and the
        perimysium between muscle fibre bundles, which ultrasound shows as bright lines.
    """

    torso_half_width_mm: Range = (140.0, 165.0)
    torso_half_depth_mm: Range = (100.0, 120.0)
    fat_mm: Range = (10.0, 25.0)
    muscle_mm: Range = (12.0, 20.0)
    vertebra_scale: Range = (0.92, 1.08)
    vertebra_jitter: float = 0.03
    disc_scale: Range = (0.8, 1.2)
    lordosis_deg: Range = (30.0, 55.0)
    back_curve: Range = (1.0, 1.0)
    rotation_deg: float = 2.0
    organ_scale: Range = (0.9, 1.1)
    ct_noise_hu: float = 10.0
    margin_mm: float = 15.0
    fat_septa: float = 0.15
    muscle_septa: float = 0.08

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "Range":
                ok = len(value) == 2 and all(np.isfinite(value)) and 0 <= value[0] <= value[1]
                if not ok:
                    raise InputError(f"phantom param {f.name}: expected [low, high] with 0 <= low <= high, got {value}")
            elif not (np.isfinite(value) and value >= 0):
                raise InputError(f"phantom param {f.name}: expected a finite number >= 0, got {value}")
        _check_range(self, "lordosis_deg", 0.0, 80.0)
        _check_range(self, "back_curve", 0.0, 1.0)
        _check_range(self, "vertebra_scale", 0.5, 1.5)
        _check_range(self, "disc_scale", 0.3, 2.0)
        _check_range(self, "organ_scale", 0.5, 1.5)
        _check_range(self, "torso_half_width_mm", 110.0, 250.0)
        _check_range(self, "torso_half_depth_mm", 90.0, 200.0)
        if self.vertebra_jitter > 0.2:
            raise InputError(f"phantom param vertebra_jitter: expected a fraction <= 0.2, got {self.vertebra_jitter}")
        for name in ("fat_septa", "muscle_septa"):
            if getattr(self, name) > 0.3:
                raise InputError(f"phantom param {name}: expected a fraction <= 0.3, got {getattr(self, name)}")
        if self.rotation_deg > 15.0:
            raise InputError(f"phantom param rotation_deg: expected <= 15 degrees, got {self.rotation_deg}")

    @classmethod
    def from_dict(cls, overrides: Mapping[str, object] | None) -> "PhantomParams":
        """Defaults with `overrides` (e.g. the `params` block of conf/patient/phantom.yaml) applied."""
        overrides = dict(overrides or {})
        check_keys(overrides, cls, "phantom params")
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in overrides.items():
            try:
                values[key] = tuple(float(v) for v in value) if known[key].type == "Range" else float(value)
            except (TypeError, ValueError):
                kind = "[low, high]" if known[key].type == "Range" else "a number"
                raise InputError(f"phantom param {key}: expected {kind}, got {value!r}") from None
        return cls(**values)


def _check_range(params: PhantomParams, name: str, low: float, high: float) -> None:
    value = getattr(params, name)
    if value[0] < low or value[1] > high:
        raise InputError(f"phantom param {name}: expected a range within [{low}, {high}], got {value}")


# Nominal vertebra sizes (mm, degrees), bottom-up. body: full width, AP depth, height; disc: the
# disc below; spinous: caudal tilt and length; tp: transverse process (S1: ala) length, half AP
# thickness, half height. Values follow published lumbar morphometry (body ~45 x 35 x 27 mm).
_LEVELS = (
    # name, width, depth, height, disc, spin_deg, spin_len, tp_len, tp_half_ap, tp_half_h
    ("S1", 52.0, 32.0, 28.0, 0.0, 20.0, 12.0, 30.0, 10.0, 12.0),
    ("L5", 50.0, 35.0, 26.0, 10.0, 12.0, 20.0, 20.0, 5.0, 7.0),
    ("L4", 48.0, 35.0, 27.0, 11.0, 10.0, 24.0, 24.0, 3.5, 6.0),
    ("L3", 46.0, 34.0, 27.0, 10.0, 10.0, 25.0, 28.0, 3.0, 5.5),
    ("L2", 44.0, 33.0, 26.0, 9.0, 12.0, 26.0, 24.0, 3.0, 5.0),
    ("L1", 42.0, 32.0, 25.0, 8.0, 15.0, 26.0, 18.0, 3.0, 5.0),
    ("T12", 40.0, 30.0, 23.0, 7.0, 35.0, 24.0, 14.0, 3.0, 4.0),
)


class Pedicle(NamedTuple):
    """Pedicle morphometry of one level: isthmus width and height (mm) and the transverse angle
    (deg) of the pedicle axis, which converges medially as it runs anterior."""

    width_mm: float
    height_mm: float
    transverse_deg: float


# Lumbar means of Zindrick et al. (Spine 1987; REFERENCE section 7): the isthmus widens and the axis
# converges more from L1 to L5. T12 is a little narrower than L1 and S1 is like L5 (outside the table).
PEDICLES: dict[str, Pedicle] = {
    "vertebrae_T12": Pedicle(7.8, 15.0, 10.0),
    "vertebrae_L1": Pedicle(8.7, 15.4, 11.0),
    "vertebrae_L2": Pedicle(8.9, 15.0, 12.0),
    "vertebrae_L3": Pedicle(10.3, 14.9, 14.0),
    "vertebrae_L4": Pedicle(12.9, 14.8, 18.0),
    "vertebrae_L5": Pedicle(18.0, 14.0, 30.0),
    "vertebrae_S1": Pedicle(18.0, 14.0, 30.0),
}
_CANAL_GAP_MM = 0.5  # bone-free gap between a pedicle and the canal, which is painted first and never covered

STRUCTURE_NAMES: dict[str, int] = {
    name: i + 1
    for i, name in enumerate(
        [
            "subcutaneous_fat",
            "skeletal_muscle",
            "autochthon_left",
            "autochthon_right",
            "iliopsoas_left",
            "iliopsoas_right",
            "liver",
            "kidney_left",
            "kidney_right",
            "aorta",
            "inferior_vena_cava",
            "spinal_canal",
            "spinal_cord",
            "intervertebral_disc",
        ]
        + [f"vertebrae_{lv[0]}" for lv in reversed(_LEVELS)]
    )
}

# CT numbers per tissue class (HU). Bone is split by depth below its surface (`_bone_hu`): a cortical
# shell CORTEX_MM thick at CORTICAL_HU over cancellous bone at CANCELLOUS_HU ("bone" classifies).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "water": 10.0,
    "fat": -100.0,
    "skin": 20.0,
    "muscle": 50.0,
    "soft_tissue": 40.0,
    "liver": 60.0,
    "kidney": 35.0,
    "blood": 40.0,
    "cartilage": 90.0,
    "bone": 700.0,
    "lung": -800.0,
    "fascia": 80.0,  # dense collagen, a little above muscle
}
# Fibrous septa (`_septa`): level sheets of Gaussian random fields with these standard deviations
# (x, y, z mm). Fat lobules on the back are 5-15 mm across; muscle fibre bundles run along the body
# axis (z; the erector spinae parallel to the spine), so their perimysium is elongated along it.
FAT_SEPTA_SIGMA_MM = (3.5, 3.5, 3.5)
MUSCLE_SEPTA_SIGMA_MM = (2.0, 2.0, 12.0)
CANCELLOUS_HU = 250.0  # adult lumbar trabecular bone
CORTICAL_HU = 1200.0  # lumbar cortical bone (1000-1800 HU)
CORTEX_MM = 1.5  # the middle of the 1-2 mm lumbar cortex (the drill's label path uses the same, DrillCfg.cortex_m)
_TORSO_EXPONENT = 2.3  # superellipse: a flatter back and sides than an ellipse
_MAX_VOXELS = 200_000_000
# Rounded bone edges: the radius as a fraction of a process's smaller cross-section half extent
# (laminae 5 mm thick: 2 mm edges; transverse processes oval rods; a spinous process's rounded tip).
EDGE_ROUNDING = 0.8
MAX_SPACING_MM = 4.0  # coarser grids lose the laminae of some levels and with them lumbar landmarks


@dataclass(frozen=True)
class _Solid:
    """A primitive in the patient frame (mm). `rotation` columns are its local axes.

    kind "ellipsoid": semi-axes `half`; "cylinder": elliptic cross-section `half[:2]`, axis local
    z of half length `half[2]`; "box": half extents; "capsule": radius `half[0]` around the
    local-z segment of half length `half[2]`; "rod": a box of half extents `half` whose four long
    edges (along local z) are rounded with radius EDGE_ROUNDING x min(half[:2]), its ends flat;
    "rounded_box": a box with every edge and corner rounded so.
    """

    kind: str
    centre: np.ndarray
    rotation: np.ndarray
    half: np.ndarray

    def corners(self) -> np.ndarray:
        """(8, 3) corners of a box enclosing the solid, patient frame (mm)."""
        half = self.half.copy()
        if self.kind == "capsule":
            half = np.array([half[0], half[0], half[2] + half[0]])
        signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
        return self.centre + (signs * half) @ self.rotation.T

    def contains(self, p: list[np.ndarray]) -> np.ndarray:
        """Inside test for local coordinates `p` = [px, py, pz] (broadcastable arrays, mm)."""
        px, py, pz = p
        hx, hy, hz = self.half
        if self.kind == "ellipsoid":
            return (px / hx) ** 2 + (py / hy) ** 2 + (pz / hz) ** 2 <= 1.0
        if self.kind == "cylinder":
            return ((px / hx) ** 2 + (py / hy) ** 2 <= 1.0) & (np.abs(pz) <= hz)
        if self.kind == "box":
            return (np.abs(px) <= hx) & (np.abs(py) <= hy) & (np.abs(pz) <= hz)
        if self.kind in ("rod", "rounded_box"):
            # A rounded box is the inner box grown by a ball: inside where the distance beyond the
            # inner box's faces, per axis, has a norm within the radius (a rod rounds x and y only).
            r = EDGE_ROUNDING * min(hx, hy)
            qx, qy = (np.maximum(np.abs(q) - (h - r), 0.0) for q, h in ((px, hx), (py, hy)))
            if self.kind == "rod":
                return (qx * qx + qy * qy <= r * r) & (np.abs(pz) <= hz)
            qz = np.maximum(np.abs(pz) - (hz - r), 0.0)
            return qx * qx + qy * qy + qz * qz <= r * r
        beyond = np.maximum(np.abs(pz) - hz, 0.0)
        return px**2 + py**2 + beyond**2 <= hx**2


@dataclass(frozen=True)
class _Grid:
    """Voxel grid: voxel [i, j, k] centre = origin + spacing * (i, j, k), mm."""

    origin: np.ndarray
    spacing: float
    shape: tuple[int, int, int]

    def axis(self, a: int, lo: int, hi: int) -> np.ndarray:
        return (self.origin[a] + self.spacing * np.arange(lo, hi)).astype(np.float32)


@dataclass(frozen=True)
class _Vertebra:
    """One vertebra laid out: centre (3,) mm, rotation (3, 3) local->patient, scaled sizes (mm)."""

    name: str
    centre: np.ndarray
    rotation: np.ndarray
    scale: float
    width: float
    depth: float
    height: float
    spin_deg: float
    spin_len: float
    tp: tuple[float, float, float]

    def point(self, local: Iterable[float]) -> np.ndarray:
        return self.centre + self.rotation @ np.asarray(local, float)

    @property
    def canal_half(self) -> tuple[float, float]:
        """Spinal canal half width and half AP depth (mm); lumbar canal ~23 x 16 mm."""
        return 11.5 * self.scale, 8.0 * self.scale


def _rot(axis: int, angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by `angle` (rad) about patient axis 0=x, 1=y, 2=z."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _frame(z_axis: np.ndarray, x_ref: np.ndarray) -> np.ndarray:
    """(3, 3) rotation whose local z is `z_axis` and local x is `x_ref` made orthogonal to it."""
    z = z_axis / np.linalg.norm(z_axis)
    x = x_ref - (x_ref @ z) * z
    x /= np.linalg.norm(x)
    return np.column_stack([x, np.cross(z, x), z])


def _segment(
    kind: str, a: np.ndarray, b: np.ndarray, x_ref: np.ndarray, half_xy: Iterable[float], extend: float = 0.0
) -> _Solid:
    """Solid spanning the segment a->b (patient frame, mm), lengthened by `extend` at each end."""
    rotation = _frame(b - a, x_ref)
    half = np.array([*half_xy, np.linalg.norm(b - a) / 2 + extend])
    return _Solid(kind, (a + b) / 2, rotation, half)


# ----------------------------------------------------------------------------------------------
# Layout: sizes, positions and orientations (mm), no voxels yet.


def _sample(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _layout_spine(rng: np.random.Generator, p: PhantomParams) -> list[_Vertebra]:
    """Vertebrae bottom-up (S1..T12) along a lordotic arc in the y-z plane; L3 centre at 0."""
    scale = _sample(rng, p.vertebra_scale)
    disc_scale = _sample(rng, p.disc_scale)
    lordosis = np.deg2rad(_sample(rng, p.lordosis_deg))
    scales = scale * (1 + rng.uniform(-p.vertebra_jitter, p.vertebra_jitter, len(_LEVELS)))
    tilts = np.deg2rad(rng.uniform(-p.rotation_deg, p.rotation_deg, (len(_LEVELS), 3)))

    half_h = np.array([lv[3] for lv in _LEVELS]) * scales / 2
    gaps = half_h[:-1] + half_h[1:] + np.array([lv[4] for lv in _LEVELS[1:]]) * disc_scale
    s = np.concatenate([[0.0], np.cumsum(gaps)])  # arc length of each centre from S1
    names = [lv[0] for lv in _LEVELS]
    i_l1, i_l3 = names.index("L1"), names.index("L3")
    # Curvature so that the L1 and S1 upper endplates differ by the lordosis angle.
    kappa = lordosis / ((s[i_l1] + half_h[i_l1]) - (s[0] + half_h[0]))
    phi = kappa * (s - s[i_l3])  # sagittal tilt, 0 at the apex L3; local z -> (0, -sin, cos)
    centres = np.zeros((len(_LEVELS), 3))
    for j in range(1, len(_LEVELS)):
        mid = kappa * ((s[j - 1] + s[j]) / 2 - s[i_l3])  # chord direction of a circular arc
        centres[j] = centres[j - 1] + gaps[j - 1] * np.array([0.0, -np.sin(mid), np.cos(mid)])
    centres -= centres[i_l3]

    spine = []
    for j, (name, width, depth, height, _, spin_deg, spin_len, tp_len, tp_ap, tp_h) in enumerate(_LEVELS):
        k = scales[j]
        rotation = _rot(0, phi[j]) @ _rot(2, tilts[j, 2]) @ _rot(1, tilts[j, 1]) @ _rot(0, tilts[j, 0])
        spine.append(
            _Vertebra(
                name=f"vertebrae_{name}",
                centre=centres[j],
                rotation=rotation,
                scale=k,
                width=width * k / 2,
                depth=depth * k / 2,
                height=height * k / 2,
                spin_deg=spin_deg,
                spin_len=spin_len * k,
                tp=(tp_len * k, tp_ap * k, tp_h * k),
            )
        )
    return spine


def _ellipse_entry(start: np.ndarray, direction: np.ndarray, half: tuple[float, float]) -> float | None:
    """Smallest t >= 0 at which start + t * direction ((2,) each, mm) is on or inside the ellipse of
    semi-axes `half` centred at 0, or None if the ray misses it."""
    a = float(np.sum((direction / half) ** 2))
    b = 2.0 * float(np.sum(start * direction / np.square(half)))
    c = float(np.sum((start / half) ** 2)) - 1.0
    if c <= 0:
        return 0.0
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    t = (-b - np.sqrt(disc)) / (2 * a)
    return float(t) if t >= 0 else None


def _pedicle(v: _Vertebra, side: float) -> _Solid:
    """The pedicle on `side` (-1 left, +1 right) of `v`: an elliptic cylinder of the level's isthmus
    width x height (`PEDICLES`, scaled by the vertebra) whose axis runs in the transverse plane from
    posterolateral to anteromedial at the level's transverse angle (patient frame, mm).

    Its medial wall is the tangent, at that angle, of the canal's elliptic cross-section (plus
    `_CANAL_GAP_MM`), so the pedicle walls the canal in without narrowing it. It runs from behind the
    canal's back wall, where the lamina starts, into the body until all of its width is in (+2 mm).
    """
    ped = PEDICLES[v.name]
    k = v.scale
    half_w, half_h = ped.width_mm * k / 2, ped.height_mm * k / 2
    theta = np.deg2rad(ped.transverse_deg)
    c, s = np.cos(theta), np.sin(theta)
    crx, cry = v.canal_half
    y_canal = -(v.depth + cry - 0.5)  # the canal's centre line (see `_tubes`)
    lateral = np.array([side * c, s])  # in-plane unit normal of the axis, pointing away from the canal
    direction = np.array([-side * s, c])  # along the axis, anterior and medial
    # The canal's support in the lateral direction: the farthest its ellipse reaches across the axis.
    reach = np.hypot(crx * c, cry * s)
    centre = np.array([side * (reach + _CANAL_GAP_MM + half_w) / c, y_canal])  # axis at the canal's centre depth
    edges = [centre + o * lateral for o in (-half_w, 0.0, half_w)]
    entries = [t for e in edges if (t := _ellipse_entry(e, direction, (v.width, v.depth))) is not None]
    front = max(entries, default=cry) + 2.0 * k
    back = (y_canal - (-(v.depth + 2 * cry) - 1.0)) / c  # to 1 mm behind the canal's back wall, as the lamina
    a, b = (np.array([*(centre + t * direction), 0.0]) for t in (-back, front))
    return _segment("cylinder", v.point(a), v.point(b), v.rotation[:, 0], (half_w, half_h))


def _vertebra_solids(v: _Vertebra) -> tuple[_Solid, list[_Solid]]:
    """(body, posterior elements) of one vertebra, patient frame (mm).

    Local frame: x right, y anterior (posterior elements at negative y), z superior.
    """
    W, D, H, k = v.width, v.depth, v.height, v.scale
    crx, cry = v.canal_half
    R = v.rotation
    ex, ez = R[:, 0], R[:, 2]
    arch_y = -(D + 2 * cry)  # posterior wall of the canal
    xp = crx + 3.0 * k  # where the laminae, transverse and articular processes attach, beside the canal
    body = _Solid("cylinder", v.centre, R, np.array([W, D, H]))
    parts = []
    for side in (-1.0, 1.0):
        parts.append(_pedicle(v, side))
        lamina = (v.point((side * xp, arch_y, 0)), v.point((0, arch_y - 7 * k, 0)))
        # Half-height 0.4 H: laminae ~22 mm tall leave the interlaminar gaps a paramedian view shows.
        parts.append(_segment("rod", *lamina, ez, (0.4 * H, 2.5 * k), extend=2.0))
        tp_len, tp_ap, tp_h = v.tp
        tp_root = v.point((side * (xp + 2), -(D + cry), 0))
        parts.append(_segment("rod", tp_root, tp_root + side * ex * tp_len, ez, (tp_h, tp_ap), extend=1.0))
        # Articular processes: superior ones lateral-anterior, inferior ones medial-posterior, so
        # that neighbours' processes sit side by side as facet joints.
        # The inferior ones stop short of the lower vertebra's lamina.
        superior = (
            v.point((side * (xp + 1.5), arch_y + 1, 0.3 * H)),
            v.point((side * (xp + 2), arch_y + 1, H + 9 * k)),
        )
        parts.append(_segment("capsule", *superior, ex, (3.5 * k, 3.5 * k)))
        if v.name != "vertebrae_S1":  # S1 is fused with the sacrum below
            inferior = (
                v.point((side * (xp - 4.5), arch_y - 4, -0.3 * H)),
                v.point((side * (xp - 5), arch_y - 4, -(H + 4 * k))),
            )
            parts.append(_segment("capsule", *inferior, ex, (3.5 * k, 3.5 * k)))
    beta = np.deg2rad(v.spin_deg)
    root = v.point((0, arch_y - 5 * k, 0))
    tip = root + v.spin_len * (R @ np.array([0.0, -np.cos(beta), -np.sin(beta)]))
    parts.append(_segment("rounded_box", root, tip, ex, (3.0 * k, 0.45 * H)))  # ~24 mm tall: interspinous gaps
    return body, parts


def _spine_nodes(spine: list[_Vertebra], local: list[tuple[float, float]], extend: float) -> np.ndarray:
    """(n + 2, 3) points at per-vertebra local (x, y) offsets, plus ends `extend` mm beyond S1/T12."""
    pts = np.array([v.point((x, y, 0)) for v, (x, y) in zip(spine, local)])
    below = pts[0] - extend * spine[0].rotation[:, 2]
    above = pts[-1] + extend * spine[-1].rotation[:, 2]
    return np.vstack([below, pts, above])


def _tube(nodes: np.ndarray, half_xy: np.ndarray) -> list[_Solid]:
    """Elliptic-cylinder pieces along a polyline `nodes` (n, 3) with half sizes `half_xy` (n, 2)."""
    x_ref = np.array([1.0, 0.0, 0.0])
    return [
        _segment("cylinder", nodes[i], nodes[i + 1], x_ref, (half_xy[i] + half_xy[i + 1]) / 2, extend=1.5)
        for i in range(len(nodes) - 1)
    ]


# ----------------------------------------------------------------------------------------------
# Rasterisation


def _inside(solid: _Solid, grid: _Grid) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxel mask of `solid` within its bounding sub-volume: (slices, bool mask), None if outside."""
    corners = solid.corners()
    lo = np.floor((corners.min(0) - grid.origin) / grid.spacing).astype(int)
    hi = np.ceil((corners.max(0) - grid.origin) / grid.spacing).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, grid.shape)
    if np.any(hi <= lo):
        return None
    d = [
        (grid.axis(a, lo[a], hi[a]) - np.float32(solid.centre[a])).reshape([-1 if b == a else 1 for b in range(3)])
        for a in range(3)
    ]
    R = solid.rotation.astype(np.float32)
    local = [d[0] * R[0, c] + d[1] * R[1, c] + d[2] * R[2, c] for c in range(3)]
    return tuple(slice(low, high) for low, high in zip(lo, hi)), solid.contains(local)


def _paint(vol: np.ndarray, grid: _Grid, solids: Iterable[_Solid], sid: int, allowed: np.ndarray) -> None:
    """Set voxels inside `solids` to `sid` where the current id is `allowed` ((256,) bool)."""
    for solid in solids:
        found = _inside(solid, grid)
        if found is None:
            continue
        sl, mask = found
        sub = vol[sl]
        sub[mask & allowed[sub]] = sid


def _ids(names: Iterable[str], unlabelled: bool = True) -> np.ndarray:
    """(256,) bool lookup, True for the named structures (and for id 0 if `unlabelled`)."""
    lut = np.zeros(256, bool)
    lut[0] = unlabelled
    lut[[STRUCTURE_NAMES[n] for n in names]] = True
    return lut


# ----------------------------------------------------------------------------------------------
# Torso, organs, spine


def _torso(
    grid: _Grid,
    spine: list[_Vertebra],
    half_w: float,
    half_d: float,
    fat: float,
    muscle: float,
    back_y: float,
    back_curve: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Body mask and structure ids (fat shell, muscle wall) of the torso, (I, J, K) each.

    The cross-section is a superellipse whose centre follows `back_curve` of the spine's sagittal
    curve (1: the back skin runs parallel to the lordosis), keeping at least half the L3 cover
    over the spine; at L3 the back skin is at `back_y` (mm).
    """
    z = grid.axis(2, 0, grid.shape[2])
    cz = np.array([v.centre[2] for v in spine])
    cy = np.array([v.centre[1] for v in spine])
    curve = np.interp(z, cz, cy)  # spine centre y (mm), 0 at L3, negative (posterior) above and below
    follow = np.minimum(back_curve * curve, curve + 0.5 * (fat + muscle))
    centre_y = follow.astype(np.float32) + np.float32(back_y + half_d)
    x = grid.axis(0, 0, grid.shape[0])[:, None, None]
    dy = grid.axis(1, 0, grid.shape[1])[None, :, None] - centre_y[None, None, :]

    def inside(shrink: float) -> np.ndarray:
        a, b = half_w - shrink, half_d - shrink
        return np.abs(x / a) ** _TORSO_EXPONENT + np.abs(dy / b) ** _TORSO_EXPONENT <= 1.0

    body = inside(0.0)
    inner = inside(fat)
    structures = np.zeros(grid.shape, np.uint8)
    structures[body & ~inner] = STRUCTURE_NAMES["subcutaneous_fat"]
    structures[inner & ~inside(fat + muscle)] = STRUCTURE_NAMES["skeletal_muscle"]
    return body, structures


def _organs(spine: list[_Vertebra], organ_scale: float) -> dict[str, list[_Solid]]:
    """Liver edge (right, upper) and kidneys (left higher than right), patient frame (mm)."""
    by_name = {v.name: v for v in spine}
    t12, l1, l2 = by_name["vertebrae_T12"], by_name["vertebrae_L1"], by_name["vertebrae_L2"]
    k = organ_scale
    eye = np.eye(3)
    liver = _Solid("ellipsoid", t12.centre + [75.0, 40.0, 25.0], eye, k * np.array([80.0, 65.0, 75.0]))
    # Upper poles tilt medially; hila face antero-medially.
    kidney_half = k * np.array([27.0, 20.0, 52.0])
    tilt_l = _rot(2, np.deg2rad(30)) @ _rot(1, np.deg2rad(12))
    kidney_l = _Solid("ellipsoid", (l1.centre + l2.centre) / 2 + [-72.0, 5.0, 0.0], tilt_l, kidney_half)
    tilt_r = _rot(2, np.deg2rad(-30)) @ _rot(1, np.deg2rad(-12))
    kidney_r = _Solid("ellipsoid", l2.centre + [72.0, 5.0, -5.0], tilt_r, kidney_half)
    return {"liver": [liver], "kidney_left": [kidney_l], "kidney_right": [kidney_r]}


def _tubes(spine: list[_Vertebra], extend: float) -> dict[str, list[_Solid]]:
    """Structures that follow the spine: canal, cord, back and psoas muscles, aorta, IVC (mm)."""
    n = len(spine)
    names = [v.name for v in spine]
    canal = [(0.0, -(v.depth + v.canal_half[1] - 0.5)) for v in spine]
    canal_half = np.array([v.canal_half for v in (spine[0], *spine, spine[-1])])
    out = {"spinal_canal": _tube(_spine_nodes(spine, canal, extend), canal_half)}

    # The cord ends (conus medullaris) at the L1-L2 disc; below it the canal holds only fluid.
    i_l1 = names.index("vertebrae_L1")
    cord_nodes = _spine_nodes(spine, canal, extend)[i_l1 + 1 :]
    l1 = spine[i_l1]
    conus = cord_nodes[0] - l1.rotation[:, 2] * (l1.height + 4.0)
    cord_nodes = np.vstack([conus, cord_nodes])
    cord_half = np.full((len(cord_nodes), 2), 4.5)
    cord_half[0] = 1.5
    out["spinal_cord"] = _tube(cord_nodes, cord_half)

    for side, suffix in ((-1.0, "left"), (1.0, "right")):
        back = [(side * 27.0, -(v.depth + 2 * v.canal_half[1] + 22.0)) for v in spine]
        out[f"autochthon_{suffix}"] = _tube(_spine_nodes(spine, back, extend), np.full((n + 2, 2), [22.0, 30.0]))
        # Psoas starts thin at T12/L1 and thickens caudally.
        radius = np.array([21.0, 21.0, 20.0, 18.0, 15.0, 12.0, 8.0, 3.0, 3.0])
        psoas = [(side * (v.width + r - 4.0), 0.0) for v, r in zip(spine, radius[1:-1])]
        out[f"iliopsoas_{suffix}"] = _tube(
            _spine_nodes(spine, psoas, extend)[:-1], np.column_stack([radius, radius])[:-1]
        )

    # The aorta bifurcates at L4 and the IVC forms at L5.
    aorta = _spine_nodes(spine, [(-16.0, v.depth + 12.0) for v in spine], extend)[names.index("vertebrae_L4") + 1 :]
    out["aorta"] = _tube(aorta, np.full((len(aorta), 2), 11.0))
    ivc = _spine_nodes(spine, [(20.0, v.depth + 12.0) for v in spine], extend)[names.index("vertebrae_L5") + 1 :]
    out["inferior_vena_cava"] = _tube(ivc, np.full((len(ivc), 2), [12.0, 9.0]))
    return out


def _discs(spine: list[_Vertebra]) -> list[_Solid]:
    """Discs between neighbouring bodies, overlapping both endplates (bodies paint over them)."""
    discs = []
    for lower, upper in zip(spine[:-1], spine[1:]):
        a = lower.centre + lower.rotation[:, 2] * (lower.height - 2.0)
        b = upper.centre - upper.rotation[:, 2] * (upper.height - 2.0)
        half_xy = 0.97 * np.array([min(lower.width, upper.width), min(lower.depth, upper.depth)])
        discs.append(_segment("cylinder", a, b, lower.rotation[:, 0] + upper.rotation[:, 0], half_xy))
    return discs


def _spine_extent(spine: list[_Vertebra]) -> tuple[np.ndarray, np.ndarray]:
    """(3,) min and max corner of all vertebra solids (mm)."""
    solids = [_vertebra_solids(v) for v in spine]
    corners = np.vstack([s.corners() for body, parts in solids for s in [body, *parts]])
    return corners.min(0), corners.max(0)


def _make_grid(
    spine: list[_Vertebra], spacing: float, half_w: float, half_d: float, back_y: float, margin: float
) -> _Grid:
    """Grid covering the torso across x and y and T12-S1 along z, with `margin` mm around."""
    lo, hi = _spine_extent(spine)
    cy = np.array([v.centre[1] for v in spine])
    lower = np.array([-half_w - margin, cy.min() + back_y - margin, lo[2] - margin])
    upper = np.array([half_w + margin, cy.max() + back_y + 2 * half_d + margin, hi[2] + margin])
    shape = tuple(int(n) for n in np.ceil((upper - lower) / spacing).astype(int) + 1)
    if np.prod(shape, dtype=np.int64) > _MAX_VOXELS:
        raise InputError(f"spacing_mm: {spacing} gives {shape} voxels, over {_MAX_VOXELS}; expected a coarser spacing")
    return _Grid(lower, spacing, shape)


def _posterior_tip(v: _Vertebra) -> float:
    """y (mm) of the most posterior point of a vertebra's spinous process."""
    return float(_vertebra_solids(v)[1][-1].corners()[:, 1].min())


def _rasterise(
    grid: _Grid, spine: list[_Vertebra], structures: np.ndarray, organ_scale: float, extend: float
) -> np.ndarray:
    """Paint organs, muscles, vessels, canal, discs and vertebrae into `structures` (in place).

    Later structures only overwrite the ids listed as allowed, which fixes the precedence
    (vertebrae over discs over muscle, but nothing over the canal).
    """
    S = STRUCTURE_NAMES
    organs, tubes = _organs(spine, organ_scale), _tubes(spine, extend)
    _paint(structures, grid, organs["liver"], S["liver"], _ids([]))
    for name in ("kidney_left", "kidney_right"):
        _paint(structures, grid, organs[name], S[name], _ids(["liver"]))
    soft = ["skeletal_muscle", "liver"]
    for name in ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"):
        _paint(structures, grid, tubes[name], S[name], _ids(soft))
    for name in ("aorta", "inferior_vena_cava"):
        _paint(structures, grid, tubes[name], S[name], _ids(soft + ["iliopsoas_left", "iliopsoas_right"]))
    everything = np.ones(256, bool)
    _paint(structures, grid, tubes["spinal_canal"], S["spinal_canal"], everything)
    _paint(structures, grid, tubes["spinal_cord"], S["spinal_cord"], _ids(["spinal_canal"], unlabelled=False))
    protected = _ids(["spinal_canal", "spinal_cord"], unlabelled=False)
    _paint(structures, grid, _discs(spine), S["intervertebral_disc"], ~protected)

    vertebra_ids = _ids([v.name for v in spine], unlabelled=False)
    for v in spine:
        vid = S[v.name]
        allowed = ~(protected | vertebra_ids)
        allowed[vid] = True
        body, parts = _vertebra_solids(v)
        _paint(structures, grid, [body, *parts], vid, allowed)
    _drop_fragments(structures, [S[v.name] for v in spine])


def _drop_fragments(structures: np.ndarray, ids: list[int]) -> None:
    """Keep only the largest 26-connected piece of each id (in place); the rest becomes 0.

    Neighbouring vertebrae's processes interleave, so a process tip can be cut off by the
    neighbour painted first; a vertebra label should be one bone.
    """
    boxes = ndimage.find_objects(structures)
    for sid in ids:
        box = boxes[sid - 1]
        sub = structures[box]
        labels, n = ndimage.label(sub == sid, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            keep = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
            sub[(labels > 0) & (labels != keep)] = 0


def _bone_hu(ct: np.ndarray, bone: np.ndarray, spacing_m: float) -> None:
    """Set bone voxels of ct (I, J, K) to CORTICAL_HU within CORTEX_MM of the bone's surface and to
    CANCELLOUS_HU deeper (in place): every bone, vertebral bodies and posterior elements alike, has a
    cortical shell over a cancellous core, as the drill meets it. bone (I, J, K) bool; isotropic voxels."""
    found = ndimage.find_objects(bone.astype(np.uint8))
    if not found:
        return
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found[0])
    sub = bone[box]
    depth_mm = ndimage.distance_transform_edt(sub) * (spacing_m * 1e3)  # to the nearest voxel outside
    # A voxel centre's depth below the surface (halfway to the outside voxel) is the distance less half a voxel.
    ct[box][sub] = np.where(depth_mm[sub] - 0.5 * spacing_m * 1e3 < CORTEX_MM, CORTICAL_HU, CANCELLOUS_HU)


def _septa(tissue: np.ndarray, spacing_mm: float, septa: dict[str, tuple[float, tuple[float, ...]]], seed: int) -> None:
    """Paint fibrous septa into `tissue` (I, J, K), in place: for each class name in `septa`, the
    given fraction of its voxels becomes fascia, those where a smooth Gaussian random field (white
    noise under a Gaussian of the given (x, y, z) standard deviations, mm) is nearest zero. Such
    level sheets wall the class into lobules or, with a long z deviation, into bundles along z.
    One noise draw serves every class: the classes do not overlap."""
    fascia = TISSUE_CLASSES.index("fascia")
    targets = [(TISSUE_CLASSES.index(n), f, s) for n, (f, s) in septa.items() if f > 0]
    if not targets:
        return
    noise = np.random.default_rng([seed, 1]).standard_normal(tissue.shape, dtype=np.float32)
    for cls, fraction, sigma_mm in targets:
        mask = tissue == cls
        if not mask.any():
            continue
        field = np.abs(ndimage.gaussian_filter(noise, np.asarray(sigma_mm) / spacing_mm, truncate=3.0)[mask])
        tissue[mask] = np.where(field <= np.quantile(field, fraction), fascia, cls)


def _ct_and_tissue(
    structures: np.ndarray,
    body: np.ndarray,
    spacing_m: float,
    noise_hu: float,
    rng: np.random.Generator,
    septa: dict[str, tuple[float, tuple[float, ...]]],
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """CT (HU, float32) and tissue classes (uint8) from the structure ids, both (I, J, K); with the
    fibrous `septa` of `_septa` (from `seed`), which no structure labels."""
    tmap = TissueMap.load()
    hu_of_tissue = np.array([TISSUE_HU[t] for t in TISSUE_CLASSES], np.float32)
    lut = tmap.structure_lut(STRUCTURE_NAMES)
    # Unlabelled voxels inside the body are generic soft tissue; they classify from this CT.
    structure_hu = np.where(lut == 255, TISSUE_HU["soft_tissue"], hu_of_tissue[np.minimum(lut, len(hu_of_tissue) - 1)])
    ct = structure_hu.astype(np.float32)[structures]
    ct[~body] = TISSUE_HU["air"]
    tissue = tmap.tissue_volume(structures, STRUCTURE_NAMES, body, np.full(3, spacing_m), ct)
    _septa(tissue, spacing_m * 1e3, septa, seed)
    ct = hu_of_tissue[tissue]  # the skin shell and any reclassified voxels get their tissue's HU
    _bone_hu(ct, tissue == TISSUE_CLASSES.index("bone"), spacing_m)
    ct += rng.standard_normal(ct.shape, dtype=np.float32) * np.float32(noise_hu)
    return ct, tissue


def make_phantom(
    seed: int = 0, spacing_mm: float = 1.0, params: PhantomParams | None = None, name: str | None = None
) -> Patient:
    """A procedural prone lumbar torso (T12-S1) as a `Patient`, randomised by `seed`.

    seed: non-negative int; the same seed and spacing give identical volumes.
    spacing_mm: isotropic voxel size (mm). At 1 mm the volume is about 340 x 270 x 290 voxels.
    Returns a patient with uint8 `structures` (TotalSegmentator names, see `STRUCTURE_NAMES`),
    uint8 `tissue`, float32 `ct` (HU) and affine diag(spacing) in metres; the L3 body centre is
    near the origin and the back skin at negative y.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
    if (
        not isinstance(spacing_mm, (int, float, np.number))
        or not np.isfinite(spacing_mm)
        or not 0 < spacing_mm <= MAX_SPACING_MM
    ):
        raise InputError(
            f"spacing_mm: expected a positive finite voxel size of at most {MAX_SPACING_MM:g} mm, got {spacing_mm!r}"
        )
    if params is None:
        params = PhantomParams()
    elif not isinstance(params, PhantomParams):
        raise InputError(f"params: expected a PhantomParams (use PhantomParams.from_dict), got {type(params).__name__}")
    spacing = float(spacing_mm)
    rng = np.random.default_rng(int(seed))
    half_w = _sample(rng, params.torso_half_width_mm)
    half_d = _sample(rng, params.torso_half_depth_mm)
    fat = _sample(rng, params.fat_mm)
    muscle = _sample(rng, params.muscle_mm)
    organ_scale = _sample(rng, params.organ_scale)
    spine = _layout_spine(rng, params)

    l3 = next(v for v in spine if v.name == "vertebrae_L3")
    back_y = _posterior_tip(l3) - fat - muscle
    grid = _make_grid(spine, spacing, half_w, half_d, back_y, params.margin_mm)
    # Drawn only where it varies, so that phantoms of a fixed back_curve stay as they were.
    low, high = params.back_curve
    back_curve = _sample(rng, params.back_curve) if low < high else low
    body, structures = _torso(grid, spine, half_w, half_d, fat, muscle, back_y, back_curve)
    _rasterise(grid, spine, structures, organ_scale, extend=params.margin_mm + 40.0)
    structures[~body] = 0
    septa = {"fat": (params.fat_septa, FAT_SEPTA_SIGMA_MM), "muscle": (params.muscle_septa, MUSCLE_SEPTA_SIGMA_MM)}
    ct, tissue = _ct_and_tissue(structures, body, spacing * 1e-3, params.ct_noise_hu, rng, septa, int(seed))

    affine = np.diag([spacing * 1e-3] * 3 + [1.0])
    affine[:3, 3] = grid.origin * 1e-3
    return Patient(
        name=name or f"phantom_{int(seed)}",
        tissue=tissue,
        structures=structures,
        structure_names=dict(STRUCTURE_NAMES),
        affine=affine,
        ct=ct,
    )
