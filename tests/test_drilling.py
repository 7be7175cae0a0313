"""Drilling physics against analytic bone: a box vertebra on 0.5 mm voxels whose walls and cortex lie
at known planes, labelled (the label path) and as a CT holding the anchor HU of each material (the CT
path), with a soft cavity (a 'canal') inside, so every feed, thrust and engaged length is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sim.anatomy.patient import Patient
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError
from sim.surgery.distance import signed_distance
from sim.surgery.drilling import MAX_FEED_BOUND_M_S, REF_FEED_M_S, Drill, DrillCfg
from tests.host_sync import HostSyncGuard

MM = 1e-3
CFG = DrillCfg()
DT = 0.1  # s
# Voxel centres at odd quarter millimetres: a mask of the centres inside |x| < 8 mm has its surface at
# exactly 8 mm, and the cortex (1.5 mm, three voxels) ends exactly halfway between two centres.
CENTRES = np.arange(-19.75, 20.0, 0.5)  # mm
SPACING = 0.5 * MM
# The box |x| < 8, |y| < 12, |z| < 8 mm with a soft cavity |x| < 3, 0 < y < 4, |z| < 3 mm. Along the
# y axis from y = -16 mm: soft to -12, cortex to -10.5, cancellous to -1.5, cortex to 0 (the cavity's
# wall), cavity to 4, cortex to 5.5, cancellous to 10.5, cortex to 12, soft beyond.
ENTRY_Y_MM = -16.0
WALLS_MM = {"near": -12.0, "cavity": 0.0, "cavity_far": 4.0, "far": 12.0}


def box_patient(ct: bool, name: str = "box") -> Patient:
    """The box vertebra as bone in muscle; with `ct`, a CT of the anchors: 0 HU soft tissue,
    hu_cancellous deeper than the cortex, hu_cortical within it (the labels' own classes)."""
    x, y, z = np.meshgrid(CENTRES, CENTRES, CENTRES, indexing="ij")
    bone = (np.abs(x) < 8) & (np.abs(y) < 12) & (np.abs(z) < 8)
    bone &= ~((np.abs(x) < 3) & (y > 0) & (y < 4) & (np.abs(z) < 3))
    affine = np.diag([SPACING] * 3 + [1.0])
    affine[:3, 3] = CENTRES[0] * MM
    tissue = np.where(bone, TISSUE_ID["bone"], TISSUE_ID["muscle"]).astype(np.uint8)
    hu = None
    if ct:
        d = signed_distance(bone, np.full(3, SPACING))
        hu = np.where(bone, np.where(d > -CFG.cortex_m, CFG.hu_cortical, CFG.hu_cancellous), 0.0).astype(np.float32)
    return Patient(name, tissue, np.zeros_like(tissue), {}, affine, ct=hu)


def soft_patient(ct: bool) -> Patient:
    """A bone-free muscle block (with `ct`, 40 HU throughout): nothing but soft tissue to drill."""
    tissue = np.full((8, 8, 8), TISSUE_ID["muscle"], np.uint8)
    hu = np.full(tissue.shape, 40.0, np.float32) if ct else None
    return Patient(f"soft_{ct}", tissue, np.zeros_like(tissue), {}, np.diag([MM, MM, MM, 1.0]), ct=hu)


@pytest.fixture(scope="module")
def labels() -> Patient:
    return box_patient(ct=False, name="box_labels")


@pytest.fixture(scope="module")
def ct() -> Patient:
    return box_patient(ct=True, name="box_ct")


def along_y(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry points (n, 3) at x = z = 0, y = ENTRY_Y_MM and axes (n, 3) along +y."""
    entry = torch.tensor([[0.0, ENTRY_Y_MM * MM, 0.0]]).repeat(n, 1)
    return entry, torch.tensor([[0.0, 1.0, 0.0]]).repeat(n, 1)


def depth_at(y_mm: float) -> float:
    """The drilled depth (m) that puts the tip at y_mm."""
    return (y_mm - ENTRY_Y_MM) * MM


# The long runs take 0.25 mm sub-steps (6 per 0.5 s step instead of 15) to keep the file fast.
RUN_CFG = DrillCfg(substep_m=2.5e-4)
RUN_DT, RUN_STEPS = 0.5, 200  # s; 100 s of drilling, through the whole box at full command


@pytest.fixture(scope="module")
def run(labels, ct) -> dict:
    """One drill over [labels, ct] driven along y through the box at full command: (steps, 2)
    histories of the tip at each step's start and end (mm), feed (m/s) and thrust (N)."""
    drill = Drill([labels, ct], RUN_CFG)
    entry, axis = along_y(2)
    idx, depth = torch.arange(2), torch.zeros(2)
    out = {"start_mm": [], "end_mm": [], "feed": [], "thrust": []}
    for _ in range(RUN_STEPS):
        s = drill.step(entry, axis, depth, torch.ones(2), idx, RUN_DT)
        out["start_mm"].append(depth / MM + ENTRY_Y_MM)
        out["end_mm"].append(s.depth_m / MM + ENTRY_Y_MM)
        out["feed"].append(s.feed_m_s)
        out["thrust"].append(s.thrust_n)
        depth = s.depth_m
    return {k: torch.stack(v) for k, v in out.items()}


# The point (1.05 mm long, sampled 0.13-0.92 mm behind the tip) wholly in one material.
TIP_IN = {"soft": -14.0, "cortical": -10.7, "cancellous": -5.0}
CUSTOM = DrillCfg(max_feed_m_s=2e-3, feed_soft=0.8, feed_cancellous=0.5, feed_cortical=0.05, thrust_n=2.0)


@pytest.mark.parametrize("cfg", [CFG, CUSTOM], ids=["default", "custom"])
@pytest.mark.parametrize("source", ["labels", "ct"])
def test_feed_and_thrust_per_material_are_as_configured(labels, ct, cfg, source):
    drill = Drill([labels if source == "labels" else ct], cfg)
    n = 2 * len(TIP_IN)
    entry, axis = along_y(n)
    depth = torch.tensor([depth_at(y) for y in TIP_IN.values()] * 2)
    command = torch.tensor([1.0] * 3 + [0.5] * 3)
    s = drill.step(entry, axis, depth, command, torch.zeros(n, dtype=torch.long), DT)
    fraction = torch.tensor([cfg.feed_soft, cfg.feed_cortical, cfg.feed_cancellous] * 2)
    torch.testing.assert_close(s.feed_fraction, fraction)
    torch.testing.assert_close(s.feed_m_s, command * cfg.max_feed_m_s * fraction)
    torch.testing.assert_close(s.depth_m, depth + s.feed_m_s * DT)
    soft, cortical, cancellous = s.feed_m_s[:3]
    assert float(soft) == pytest.approx(cfg.max_feed_m_s * cfg.feed_soft)  # free
    assert float(cortical / cancellous) == pytest.approx(cfg.feed_cortical / cfg.feed_cancellous, rel=1e-5)
    # Thrust: 0 in soft tissue, thrust_n x resistance x (feed / 1 mm/s)^0.7 in bone.
    resistance = torch.tensor([0.0, cfg.feed_cancellous / cfg.feed_cortical, 1.0] * 2)
    expected = cfg.thrust_n * resistance * (s.feed_m_s / REF_FEED_M_S) ** 0.7
    torch.testing.assert_close(s.thrust_n, expected)
    if cfg is CFG:  # the defaults: 3 mm/s free, the clinical 1 mm/s in cancellous bone at 3 N, cortex 10x slower
        torch.testing.assert_close(s.feed_m_s[:3], torch.tensor([3.0, 0.1, 1.0]) * MM)
        torch.testing.assert_close(s.thrust_n[:3], torch.tensor([0.0, 30 * 0.1**0.7, 3.0]))


def test_the_ct_and_label_paths_agree(labels, ct, run):
    """One drill over both patients (and bone-free ones): at voxel centres the material is the same
    on both paths; a whole channel takes as long as its layers' thickness over their feeds on the
    label path, and about as long on the CT path (its trilinear HU blurs each boundary over a voxel,
    where log-linear feeds are faster than the labels' step)."""
    drill = Drill([labels, ct, soft_patient(False), soft_patient(True)])
    assert drill.use_ct.tolist() == [False, True, False, True]
    y = torch.arange(-15.75, 15.8, 0.5) * MM  # voxel centres along the channel
    points = torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], -1)[None].repeat(4, 1, 1)
    m = drill.material(points, torch.arange(4))
    for field in ("feed", "resistance", "bone"):
        torch.testing.assert_close(getattr(m, field)[1], getattr(m, field)[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.resistance[0].unique(), torch.tensor([0.0, 1.0, 10.0]))  # all three materials
    torch.testing.assert_close(m.feed[2:], torch.ones_like(m.feed[2:]))  # no bone: free everywhere
    # To 2 mm past the far wall: 4 mm soft, 4 x 1.5 mm cortex, 9 + 5 mm cancellous, the 4 mm cavity
    # and 2 mm soft at 3, 0.1, 1 and 3 mm/s. The point's resistance builds up over its length entering
    # a layer and fades leaving it, so the point's shape cancels out of the whole channel's time.
    layers_s = (4 + 4 + 2) / 3.0 + 4 * 1.5 / 0.1 + (9 + 5) / 1.0
    out = run["end_mm"] > WALLS_MM["far"] + 2.0
    assert bool(out[-1].all())
    t_labels, t_ct = ((float(out[:, i].float().argmax()) + 1) * RUN_DT for i in (0, 1))
    # Sub-steps of 0.25 mm at full feed run up to 0.25 mm into each of the two cortices met from soft
    # tissue at the soft speed (0.6 s each at most); steps are 0.5 s.
    assert t_labels == pytest.approx(layers_s, abs=1.5)
    assert t_ct == pytest.approx(t_labels, rel=0.1)
    assert float(run["thrust"][:, 1].max()) == pytest.approx(float(run["thrust"][:, 0].max()), rel=1e-4)


def test_sub_steps_keep_the_bit_from_running_into_a_cortex():
    """A 1 s step starting 0.2 mm before the near wall: at the soft feed the bit would end 2.8 mm
    into the cortex. Sub-stepped (0.1 mm), its point's first samples (0.13 mm behind the tip) meet
    the wall after about 0.1 s, and from then on it feeds at most 0.36 mm/s (a quarter of its
    samples in cortex), so it ends less than 0.6 mm into the cortex, pushing on it."""
    drill = Drill([box_patient(ct=False)])
    entry, axis = along_y(1)
    s = drill.step(
        entry, axis, torch.tensor([depth_at(WALLS_MM["near"] - 0.2)]), torch.ones(1), torch.zeros(1).long(), 1.0
    )
    assert float(s.depth_m) / MM + ENTRY_Y_MM < WALLS_MM["near"] + 0.6
    assert float(s.thrust_n) > 0.0


@pytest.mark.parametrize("env", [0, 1], ids=["labels", "ct"])
def test_thrust_rises_in_cortex_and_drops_on_breakthrough(run, env):
    start, end = run["start_mm"][:, env], run["end_mm"][:, env]
    thrust, feed = run["thrust"][:, env], run["feed"][:, env]
    point_mm = CFG.point_length_m / MM
    blur_mm = 0.25  # the CT's trilinear HU spreads a boundary over half a voxel each side
    cortex_peak, cancellous = 30 * 0.1**0.7, 3.0  # N at full command: 10 x the resistance at 0.1 mm/s; 1 mm/s

    def within(lo: float, hi: float) -> torch.Tensor:
        """Thrust of the steps that start after lo and end before hi (mm)."""
        return thrust[(start > lo) & (end < hi)]

    assert float(within(ENTRY_Y_MM - 1, WALLS_MM["near"] - blur_mm).abs().max()) == 0.0  # soft tissue: none
    assert float(within(-12.0, -10.5).max()) == pytest.approx(cortex_peak, rel=1e-4)  # the near cortex
    plateau = within(-10.5 + point_mm + blur_mm, -1.5 - blur_mm)
    torch.testing.assert_close(plateau, torch.full_like(plateau, cancellous))
    assert float(within(-1.5, 0.0).max()) == pytest.approx(cortex_peak, rel=1e-4)  # the canal's wall
    for wall in ("cavity", "far"):
        # Breaking through: from the point wholly in the wall's cortex to wholly out of it (in the
        # canal, or out of the bone) the thrust falls from the cortical peak to 0, never rising,
        # while the feed speeds up.
        w = WALLS_MM[wall]
        first = int((start > w - blur_mm).float().argmax())
        last = int((start > w + point_mm + blur_mm).float().argmax())
        assert float(thrust[first]) == pytest.approx(cortex_peak, rel=1e-4)
        assert bool((thrust[first : last + 1].diff() <= 1e-6).all()) and float(thrust[last]) == 0.0
        assert bool((feed[first : last + 1].diff() >= 0).all())
    # Out of the bone (the step after the far wall's breakthrough, short of the bit's length): free.
    assert float(feed[last]) == pytest.approx(CFG.max_feed_m_s)


def test_the_feed_never_exceeds_its_bound(labels):
    """NaN, infinite, huge and negative commands are sanitised; depths stay in [0, length_m]."""
    drill = Drill([labels])
    command = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -5.0, 2.0, 0.5, 1.0])
    n = len(command)
    entry, axis = along_y(n)
    idx = torch.zeros(n, dtype=torch.long)
    for y in TIP_IN.values():
        s = drill.step(entry, axis, torch.full((n,), depth_at(y)), command, idx, DT)
        assert bool(torch.isfinite(s.feed_m_s).all() and torch.isfinite(s.thrust_n).all())
        top = CFG.max_feed_m_s * float(s.feed_fraction[0])
        torch.testing.assert_close(s.feed_m_s, torch.tensor([0, 1, 0, 1, 0, 1, 0.5, 1]) * top)
        assert bool((s.feed_m_s <= CFG.max_feed_m_s).all())
    # Out-of-range depths are clamped; the bit stops at its length, float64 inputs are taken.
    depth = torch.tensor([-1.0, CFG.length_m - 1e-4, CFG.length_m, 5.0], dtype=torch.float64)
    entry, axis = along_y(4)
    s = drill.step(entry.double(), axis.double(), depth, torch.ones(4), idx[:4], DT)
    torch.testing.assert_close(
        s.depth_m, torch.tensor([CFG.max_feed_m_s * DT, CFG.length_m, CFG.length_m, CFG.length_m])
    )
    torch.testing.assert_close(s.feed_m_s, torch.tensor([CFG.max_feed_m_s, 1e-3, 0.0, 0.0]), atol=1e-7, rtol=1e-4)
    with pytest.raises(InputError, match="drill max_feed_m_s"):
        DrillCfg(max_feed_m_s=MAX_FEED_BOUND_M_S * 1.01)


def test_lateral_motion_is_resisted_by_the_engaged_bone(labels, ct):
    """Engaged bone is the drilled channel's length in bone (the cavity not counted); the lateral
    factor falls from 1 out of bone toward the floor."""
    drill = Drill([labels, ct])
    tips = [-14.0, -12.0, -11.5, -8.0, 2.0, 9.0, 15.0]  # mm
    engaged = [0.0, 0.0, 0.5, 4.0, 12.0, 17.0, 20.0]  # bone from -12 to 0 and from 4 to 12
    n = len(tips)
    entry, axis = along_y(n)
    depth = torch.tensor([depth_at(y) for y in tips])
    expected = torch.tensor(engaged) * MM
    for p in (0, 1):
        e = drill.engaged_m(entry, axis, depth, torch.full((n,), p))
        torch.testing.assert_close(e, expected, atol=1e-6, rtol=0)
    factor = drill.lateral_factor(expected)
    torch.testing.assert_close(factor, CFG.lateral_floor + (1 - CFG.lateral_floor) * torch.exp(-expected / 2e-3))
    assert float(factor[0]) == 1.0 and bool((factor.diff() <= 0).all()) and float(factor[-1]) < 0.06
    s = drill.step(entry, axis, depth, torch.zeros(n), torch.zeros(n, dtype=torch.long), DT)  # no feed
    torch.testing.assert_close(s.lateral, factor)


@pytest.mark.parametrize(
    "field, value",
    [
        ("diameter_m", 0.0),
        ("diameter_m", 0.02),
        ("length_m", -0.01),
        ("point_angle_deg", 30.0),
        ("max_feed_m_s", math.nan),
        ("max_feed_m_s", 0.5),
        ("feed_soft", 1.5),
        ("feed_cancellous", 0.0),
        ("feed_cortical", 0.5),  # faster than cancellous
        ("cortex_m", 0.01),
        ("hu_soft", -2000.0),
        ("hu_cancellous", 100.0),  # below hu_soft
        ("hu_cortical", 200.0),  # below hu_cancellous
        ("thrust_n", math.inf),
        ("lateral_floor", 1.5),
        ("lateral_depth_m", 0.0),
        ("shaft_step_m", True),
        ("material_source", "hu"),
    ],
)
def test_bad_configs_name_the_field(field, value):
    with pytest.raises(InputError, match=f"drill {field}"):
        DrillCfg(**{field: value})


def test_bad_input_names_the_input(labels):
    assert DrillCfg.from_dict({"diameter_m": 3e-3}).diameter_m == 3e-3
    with pytest.raises(InputError, match=r"drill keys \['bit_mm'\] are unknown"):
        DrillCfg.from_dict({"bit_mm": 3.5})
    with pytest.raises(InputError, match="cfg: expected a DrillCfg"):
        Drill([labels], {"diameter_m": 3e-3})
    with pytest.raises(InputError, match=r"patients \['box_labels'\] ct: expected a CT"):
        Drill([labels], DrillCfg(material_source="ct"))
    with pytest.raises(InputError, match="patients: expected at least one"):
        Drill([])
    drill = Drill([labels])
    entry, axis = along_y(2)
    depth, command, idx = torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long)
    bad_calls = {
        "entry": (entry[:, :2], axis, depth, command, idx),
        "axis": (entry, axis[:1], depth, command, idx),
        "depth_m": (entry, axis, depth[:, None], command, idx),
        "command": (entry, axis, depth, command[:1], idx),
        "patient_idx": (entry, axis, depth, command, idx.float()),
    }
    for name, args in bad_calls.items():
        with pytest.raises(InputError, match=f"^{name}: expected"):
            drill.step(*args, DT)
    for dt in (0.0, math.nan, torch.tensor(0.1)):
        with pytest.raises(InputError, match="dt_s"):
            drill.step(entry, axis, depth, command, idx, dt)
    drill.check(entry, axis, depth, idx)
    with pytest.raises(InputError, match="entry: expected finite values"):
        drill.check(entry.clone().fill_(math.nan), axis, depth, idx)
    with pytest.raises(InputError, match="axis: expected unit vectors"):
        drill.check(entry, 2 * axis, depth, idx)
    with pytest.raises(InputError, match=r"patient_idx: expected values in \[0, 1\), got \[3\]"):
        drill.check(entry, axis, depth, torch.tensor([0, 3]))


def test_the_step_is_sync_free(labels, ct):
    """Both material paths in one batch, oblique axes, every kind of command: nothing reads back."""
    drill = Drill([labels, ct])
    n = 6
    entry, _ = along_y(n)
    axis = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0, 0.0], [0.3, 1.0, 0.1], [1.0, 0.05, 0.0]] * 2), dim=-1)
    idx = torch.tensor([0, 1] * 3)
    depth = torch.full((n,), 0.01)
    command = torch.tensor([math.nan, math.inf, 1e9, -1.0, 0.3, 1.0])
    with HostSyncGuard():
        for _ in range(3):
            s = drill.step(entry, axis, depth, command, idx, DT)
            depth = s.depth_m
    assert bool(torch.isfinite(torch.stack([s.depth_m, s.thrust_n, s.lateral])).all())
