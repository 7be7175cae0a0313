"""Pedicle-screw plans: an analytic vertebra with known pedicles, the phantom (whose pedicles
follow Zindrick's table), the real 3 mm TotalSegmentator example, and the cache round trip."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sim.anatomy import cache
from sim.anatomy.derive import derive
from sim.anatomy.landmarks import LUMBAR, vertebra_landmarks
from sim.anatomy.loaders import load_nifti
from sim.anatomy.patient import Patient
from sim.anatomy.phantom import PEDICLES, make_phantom
from sim.anatomy.plans import (
    DIAMETER_FRACTION,
    PLAN_TRANSVERSE_RANGE_DEG,
    SAGITTAL_RANGE_DEG,
    ScrewPlan,
    plan_report,
    screw_plans,
)
from sim.anatomy.tissues import TISSUE_ID
from sim.surgery.breach import ChannelBreach
from sim.surgery.distance import VertebraDistance

MM = 1e-3
KEYS = [f"{level}/{side}" for level in LUMBAR for side in ("left", "right")]


def _with_plans(patient: Patient) -> Patient:
    patient.landmarks = vertebra_landmarks(patient)
    patient.plans = screw_plans(patient)
    return patient


@dataclass
class Planned:
    """A patient with plans, the breach module's distance field of its vertebrae, its voxel size (m)."""

    patient: Patient
    field: VertebraDistance
    voxel_m: float

    def distances(self, plan: ScrewPlan, offsets_m: np.ndarray) -> np.ndarray:
        """Signed distances (m) to the plan's vertebra at entry + offsets * axis."""
        points = torch.tensor(plan.entry + offsets_m[:, None] * plan.axis, dtype=torch.float32)[None]
        level = torch.tensor([LUMBAR.index(plan.level)])
        return self.field.distance(points, torch.tensor([0]), level)[0].double().numpy()

    def chord(self, plan: ScrewPlan) -> float:
        """Length (m) from the entry along the axis to where it leaves the bone (the anterior cortex)."""
        s = np.arange(0.0, 0.12, 1e-4)
        out = np.flatnonzero((self.distances(plan, s) > 0) & (s > 2 * MM))
        return float(s[out[0]])

    def check_geometry(self, plan: ScrewPlan) -> None:
        """Entry on the surface, length 0.8 chord, diameter within 0.8 isthmus and 7.5 mm."""
        assert abs(self.distances(plan, np.zeros(1))[0]) <= self.voxel_m, plan.level
        assert np.isclose(np.linalg.norm(plan.target - plan.entry), plan.length_m)
        assert 0.75 <= plan.length_m / self.chord(plan) <= 0.85, plan.level
        assert 2 * plan.radius_m <= DIAMETER_FRACTION * plan.isthmus_width_m + 1e-12
        assert 2 * plan.radius_m <= 7.5 * MM + 1e-12


@pytest.fixture(scope="module", params=[0, 1])
def phantom(request: pytest.FixtureRequest) -> Planned:
    patient = _with_plans(make_phantom(seed=request.param, spacing_mm=1.0))
    return Planned(patient, VertebraDistance([patient]), 1 * MM)


@pytest.fixture(scope="module")
def real(real_ct: Path, real_seg: Path) -> Planned:
    patient = derive(load_nifti(real_ct, real_seg), meshes=False)
    return Planned(patient, VertebraDistance([patient]), 3 * MM)


def test_phantom_plans_follow_the_pedicles(phantom: Planned) -> None:
    plans = phantom.patient.plans
    assert list(plans) == KEYS
    rows = plan_report(plans)
    assert all(row["within_range"] for row in rows)
    for key, plan in plans.items():
        assert (plan.level, plan.side) == tuple(key.split("/"))
        lo, hi = PLAN_TRANSVERSE_RANGE_DEG[plan.level]
        assert lo <= plan.transverse_deg <= hi and SAGITTAL_RANGE_DEG[0] <= plan.sagittal_deg <= SAGITTAL_RANGE_DEG[1]
        assert abs(plan.sagittal_deg) < 6.0  # the phantom's pedicles lie in the transverse plane (+-2 deg tilts)
        width = PEDICLES[plan.level].width_mm * MM  # vertebra scale 0.89-1.11
        assert abs(plan.isthmus_width_m / width - 1) < 0.25, key
        assert plan.clearance_m > 0, key
        phantom.check_geometry(plan)
        inside = phantom.distances(plan, np.arange(0.5 * MM, plan.length_m, 2.5e-4))
        assert np.all(inside < 0), key
    # Convergence grows from L1 to L5 (L1 and L2 differ by 1 deg in the table: within the search's noise).
    mean = [np.mean([plans[f"{level}/{side}"].transverse_deg for side in ("left", "right")]) for level in LUMBAR]
    assert np.all(np.diff(mean) > -2.0) and mean[-1] - mean[0] > 12.0, mean
    for level in LUMBAR:
        table = PEDICLES[level].transverse_deg
        assert abs(np.mean([plans[f"{level}/{s}"].transverse_deg for s in ("left", "right")]) - table) < 4.0, level


def test_drilling_a_phantom_plan_breaches_nothing(phantom: Planned) -> None:
    """The plans' clearance is measured like `ChannelBreach` counts: drilled from 10 mm out, grade A."""
    breach = ChannelBreach([phantom.patient])
    for plan in phantom.patient.plans.values():
        start = torch.tensor(plan.entry - 0.01 * plan.axis, dtype=torch.float32)[None]
        axis = torch.tensor(plan.axis, dtype=torch.float32)[None]
        depth = torch.tensor([plan.length_m + 0.01])
        level = torch.tensor([LUMBAR.index(plan.level)])
        result = breach(start, axis, depth, plan.radius_m, torch.tensor([0]), level)
        assert float(result.depth_m[0]) == 0.0, plan.level


def test_real_ct_plans(real: Planned) -> None:
    plans = real.patient.plans
    # The 3 mm example: a pedicle is three or four voxels across, the field accurate to about 1.5 mm.
    assert len(plans) >= 8 and set(plans) <= set(KEYS), sorted(plans)
    for plan in plans.values():
        lo, hi = PLAN_TRANSVERSE_RANGE_DEG[plan.level]
        assert lo <= plan.transverse_deg <= hi
        assert 5 * MM < plan.isthmus_width_m < 30 * MM
        assert plan.clearance_m > -3 * MM
        real.check_geometry(plan)
    l5 = [p.transverse_deg for p in plans.values() if p.level == "vertebrae_L5"]
    l1 = [p.transverse_deg for p in plans.values() if p.level == "vertebrae_L1"]
    assert min(l5) > max(l1)


def test_plans_round_trip_through_the_cache(real: Planned, tmp_path: Path) -> None:
    real = real.patient
    path = cache.save_entry(real, tmp_path, "k" * 32, {"source": "test"})
    assert "plans.json" in (path / "meta.json").read_text()
    loaded = cache.load_entry(tmp_path, "k" * 32)
    assert loaded is not None and loaded.plans.keys() == real.plans.keys()
    for key, plan in real.plans.items():
        other = loaded.plans[key]
        for name in ("level", "side", "length_m", "radius_m", "isthmus_width_m", "transverse_deg"):
            assert getattr(other, name) == getattr(plan, name)
        assert (other.sagittal_deg, other.clearance_m) == (plan.sagittal_deg, plan.clearance_m)
        np.testing.assert_array_equal(other.entry, plan.entry)
        np.testing.assert_array_equal(other.target, plan.target)


# ----------------------------------------------------------------------------------------------
# An analytic vertebra: an elliptic body, a canal, two straight elliptic tubes as pedicles at a
# known convergence, laminae and a spinous process (mm, patient frame, posterior at -y).

ANGLE_DEG, WIDTH_MM, HEIGHT_MM = 15.0, 10.0, 14.0
CANAL_Y, CANAL_HALF = -24.0, (11.5, 8.0)


def synthetic_vertebra(pedicles: tuple[str, ...] = ("left", "right"), spacing_mm: float = 0.5) -> Patient:
    """vertebrae_L3 on a grid of `spacing_mm`, body centre at the origin, with the named pedicles."""
    c = np.arange(-40.0, 40.0 + 1e-9, spacing_mm)
    y_c = np.arange(-80.0, 25.0 + 1e-9, spacing_mm)
    z_c = np.arange(-18.0, 18.0 + 1e-9, spacing_mm)
    x, y, z = np.meshgrid(c, y_c, z_c, indexing="ij")
    bone = ((x / 22) ** 2 + (y / 16) ** 2 <= 1) & (np.abs(z) <= 13)  # body
    theta = np.deg2rad(ANGLE_DEG)
    # Pedicle axes through (+-x0, CANAL_Y): the medial walls 1 mm off the canal's ellipse.
    reach = np.hypot(CANAL_HALF[0] * np.cos(theta), CANAL_HALF[1] * np.sin(theta))
    x0 = (reach + 1.0 + WIDTH_MM / 2) / np.cos(theta)
    for side in pedicles:
        s = 1.0 if side == "right" else -1.0
        along = -s * np.sin(theta) * (x - s * x0) + np.cos(theta) * (y - CANAL_Y)  # anterior-medial
        across = np.cos(theta) * (x - s * x0) + s * np.sin(theta) * (y - CANAL_Y)
        tube = (across / (WIDTH_MM / 2)) ** 2 + (z / (HEIGHT_MM / 2)) ** 2 <= 1
        bone |= tube & (along >= -26.0) & (along <= 20.0)  # through the laminae, ending 3 mm behind them
    bone |= (np.abs(x) <= 30) & (y <= -40) & (y >= -46) & (np.abs(z) <= 10)  # laminae
    bone |= (np.abs(x) <= 3) & (y <= -46) & (y >= -70) & (np.abs(z) <= 10)  # spinous process
    canal = ((x / CANAL_HALF[0]) ** 2 + ((y - CANAL_Y) / CANAL_HALF[1]) ** 2 <= 1) & (np.abs(z) <= 18)
    bone &= ~canal
    affine = np.diag([spacing_mm * MM] * 3 + [1.0])
    affine[:3, 3] = np.array([c[0], y_c[0], z_c[0]]) * MM
    patient = Patient(
        "synthetic",
        np.where(bone, TISSUE_ID["bone"], TISSUE_ID["muscle"]).astype(np.uint8),
        bone.astype(np.uint8),
        {"vertebrae_L3": 1},
        affine,
    )
    return _with_plans(patient)


def test_the_planner_recovers_known_pedicles() -> None:
    patient = synthetic_vertebra()
    assert set(patient.plans) == {"vertebrae_L3/left", "vertebrae_L3/right"}
    for plan in patient.plans.values():
        assert abs(plan.transverse_deg - ANGLE_DEG) < 2.0, plan.side
        assert abs(plan.sagittal_deg) < 2.0, plan.side
        assert abs(plan.isthmus_width_m - WIDTH_MM * MM) <= 0.5 * MM, plan.side  # one voxel
        assert plan.radius_m == pytest.approx(min(0.8 * plan.isthmus_width_m, 7.5 * MM) / 2)
        # The screw sits in the tube: its clearance is the tube's half width less the radius, to 1.5
        # voxels (trilinear interpolation cuts the field's ridge on the tube's axis, and the staircase).
        assert abs(plan.clearance_m - (WIDTH_MM / 2 * MM - plan.radius_m)) <= 0.75 * MM
        # The axis runs through the tube's axis (x = +-x0 at the canal's depth).
        s = 1.0 if plan.side == "right" else -1.0
        t = (CANAL_Y * MM - plan.entry[1]) / plan.axis[1]
        crossing = plan.entry + t * plan.axis
        theta = np.deg2rad(ANGLE_DEG)
        reach = np.hypot(CANAL_HALF[0] * np.cos(theta), CANAL_HALF[1] * np.sin(theta))
        assert abs(crossing[0] - s * (reach + 1.0 + WIDTH_MM / 2) / np.cos(theta) * MM) < 0.75 * MM


def test_a_side_without_a_pedicle_gets_a_warning_and_no_plan() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patient = synthetic_vertebra(pedicles=("right",), spacing_mm=1.0)
    assert list(patient.plans) == ["vertebrae_L3/right"]
    assert any("vertebrae_L3 left" in str(w.message) and "no screw plan" in str(w.message) for w in caught)


def test_plan_report_rows() -> None:
    plan = ScrewPlan(
        "vertebrae_L4", "left", np.zeros(3), np.array([0.0, 0.045, 0.0]), 0.045, 3.25e-3, 9e-3, 30.0, 1.0, 1e-3
    )
    (row,) = plan_report({"vertebrae_L4/left": plan})
    assert row == {
        "level": "vertebrae_L4",
        "side": "left",
        "transverse_deg": 30.0,
        "sagittal_deg": 1.0,
        "isthmus_width_mm": pytest.approx(9.0),
        "screw_diameter_mm": pytest.approx(6.5),
        "length_mm": pytest.approx(45.0),
        "clearance_mm": pytest.approx(1.0),
        "within_range": False,  # L4's published range is 11-25 deg
    }
    np.testing.assert_allclose(plan.axis, [0.0, 1.0, 0.0])
