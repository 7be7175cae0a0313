"""The beam: the lateral point-spread function against the analytic beam width, speckle grains
that follow it (depth, frequency), time-gain compensation and the angle dependence of specular
echoes. Test patients are built here; the probe looks down +y as in `slabs.py`."""

import math

import numpy as np
import pytest
import torch
from slabs import DOWN_Y, poses_at, slab_patient

from sim.anatomy.bank import PatientBank
from sim.anatomy.patient import Patient
from sim.anatomy.tissues import TISSUE_ID
from sim.transforms import matrix_to_quat, quat_to_matrix
from sim.ultrasound import realism
from sim.ultrasound.probe import ProbeSpec, beam_fwhm_m
from sim.ultrasound.renderer import Renderer, RendererConfig
from sim.ultrasound.tissue import TissueTable

QUIET = TissueTable.load().replace(soft_tissue={"echogenicity_db": None, "attenuation_db_cm_mhz": 0.0})


def test_beam_width_is_sqrt2_lambda_f_over_d_at_the_focus_and_narrowest_there():
    lam, focus, aperture = 0.000308, 0.04, 0.01
    z = torch.tensor([0.01, 0.02, focus, 0.06, 0.08, 0.12], dtype=torch.float64)
    w = beam_fwhm_m(z, lam, focus, aperture)
    assert w[2].item() == pytest.approx(math.sqrt(2) * lam * focus / aperture, rel=1e-9)
    assert int(w.argmin()) == 2
    assert bool((w[3:].diff() > 0).all())  # wider and wider beyond the focus
    # far beyond the focus both beams widen in proportion to the depth, the two-way beam with them
    far = beam_fwhm_m(torch.tensor([1.0, 2.0], dtype=torch.float64), lam, focus, aperture)
    assert (far[1] / far[0]).item() == pytest.approx(2.0, rel=0.01)
    assert far[0].item() < 2 * lam * 1.0 / aperture  # narrower than the receive beam alone
    # lambda F / D scaling at the focus
    assert beam_fwhm_m(torch.tensor(0.08), lam, 0.08, 0.02).item() == pytest.approx(w[2].item(), rel=1e-6)
    assert beam_fwhm_m(torch.tensor(focus), 2 * lam, focus, aperture).item() == pytest.approx(2 * w[2].item(), rel=1e-6)


def fwhm_of(profile: np.ndarray, spacing: float) -> float:
    """FWHM (same unit as spacing) of a single-peaked profile, half-maximum crossings interpolated."""
    peak = int(profile.argmax())
    half = profile[peak] / 2
    left = peak - np.nonzero(profile[peak::-1] < half)[0][0]
    right = peak + np.nonzero(profile[peak:] < half)[0][0]
    x_left = left + (half - profile[left]) / (profile[left + 1] - profile[left])
    x_right = right - 1 + (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    return (x_right - x_left) * spacing


def test_wire_echoes_are_as_wide_as_the_beam_at_the_focus_and_beyond():
    """Two 0.2 mm bone wires across the image plane, at the focus and 2.5 times as deep: the lateral
    width of each echo is the analytic beam width there (the wire itself adds about 1 %)."""
    spacing = 0.0001
    tissue = np.full((240, 560, 12), TISSUE_ID["soft_tissue"], np.uint8)
    x0 = 120  # voxel of x = 0
    focus = 0.02
    for x_mm, depth in ((-5.0, focus), (5.0, 2.5 * focus)):
        i, j = x0 + round(x_mm / 0.1), round((depth + 0.002) / spacing)
        tissue[i : i + 2, j : j + 2, :] = TISSUE_ID["bone"]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-x0 * spacing, 0.0, -6 * spacing]
    bank = PatientBank([Patient("wires", tissue, np.zeros_like(tissue), {}, affine)])
    probe = ProbeSpec(kind="linear", frequency_mhz=5.0, depth_m=0.052, width_m=0.022, lines=221, samples=261,
                      image_height=261, image_width=221, elevation_m=0.0, aperture_m=0.01, focus_m=focus)  # fmt: skip
    r = Renderer(bank, probe, QUIET, RendererConfig(tgc_db_cm_mhz=0.0, specular_power=0.0))
    envelope = 10 ** (r.render_lines(poses_at(0.002, x=0.0001), torch.zeros(1, dtype=torch.long))[0] / 20).numpy()
    x = r.origins[:, 0].numpy()
    for side, depth in ((x < 0, focus), (x > 0, 2.5 * focus)):
        rows = np.abs(r.dist.numpy() - depth) < 0.001
        profile = envelope[rows][:, side].max(0)
        expected = probe.lateral_fwhm_m(torch.tensor(depth, dtype=torch.float64)).item()
        assert fwhm_of(profile, 0.0001) == pytest.approx(expected, rel=0.08), depth


def speckle_grain(frequency_mhz: float, rows_mm: tuple[float, float]) -> float:
    """Lateral speckle grain (mm) of homogeneous tissue between rows_mm deep, 0.2 mm pixels."""
    table = TissueTable.load().replace(soft_tissue={"attenuation_db_cm_mhz": 0.0})
    bank = PatientBank([slab_patient([("soft_tissue", 70)], 140, 0.001)])
    probe = ProbeSpec(kind="linear", frequency_mhz=frequency_mhz, depth_m=0.06, width_m=0.04, image_height=301,
                      image_width=201, aperture_m=0.01, focus_m=0.015)  # fmt: skip
    r = Renderer(bank, probe, table, RendererConfig(tgc_db_cm_mhz=0.0))
    images = 255 * r.render(poses_at(0.002, 6, z=-0.03, z_step=0.012), torch.zeros(6, dtype=torch.long)).numpy()
    roi = (round(rows_mm[0] / 0.2), round(rows_mm[1] / 0.2), 0, 201)
    return float(np.mean([realism.measure(img, 0.2, roi, patch_mm=12.0).lateral_grain_mm for img in images]))


def test_speckle_grain_grows_past_the_focus_and_shrinks_with_frequency():
    at_focus, deep = speckle_grain(4.0, (10, 22)), speckle_grain(4.0, (40, 52))
    assert deep > 2 * at_focus, (at_focus, deep)
    deep_8mhz = speckle_grain(8.0, (40, 52))
    assert 0.4 < deep_8mhz / deep < 0.7, (deep, deep_8mhz)
    # the grain follows the beam: the intensity autocovariance of speckle is as wide as the PSF
    probe = ProbeSpec(frequency_mhz=4.0, aperture_m=0.01, focus_m=0.015)
    beam_mm = 1000 * probe.lateral_fwhm_m(torch.tensor(0.046, dtype=torch.float64)).item()
    assert deep == pytest.approx(beam_mm, rel=0.3)


@pytest.mark.parametrize("tissue", ["soft_tissue", "muscle"])
def test_homogeneous_tissue_is_depth_flat_after_the_automatic_tgc(tissue):
    """Homogeneous tissue (0.54 and 1.1 dB/cm/MHz), 5 MHz to 13 cm: each 1 cm band from 3 to 12 cm
    within 10 % of their mean; without TGC the echo falls by the round-trip attenuation."""
    bank = PatientBank([slab_patient([(tissue, 140)], 120, 0.001)])
    probe = ProbeSpec(kind="linear", frequency_mhz=5.0, depth_m=0.13, width_m=0.04, image_height=261, image_width=128)
    poses, idx = poses_at(0.002, 4, z=-0.03, z_step=0.02), torch.zeros(4, dtype=torch.long)
    auto = Renderer(bank, probe)
    assert auto.config.tgc_db_cm_mhz is None  # the default
    depth_cm = auto.dist.numpy() * 100
    bands = [(depth_cm >= d) & (depth_cm < d + 1) for d in range(3, 12)]
    image = auto.render(poses, idx).numpy()
    means = np.array([image[:, band].mean() for band in bands])
    assert np.abs(means / means.mean() - 1).max() < 0.10, means
    level = Renderer(bank, probe, config=RendererConfig(tgc_db_cm_mhz=0.0)).render_lines(poses, idx).numpy()
    untreated = np.array([level[:, band].mean() for band in bands])
    alpha = TissueTable.load().rows[tissue].attenuation_db_cm_mhz
    assert untreated[0] - untreated[-1] == pytest.approx(2 * alpha * 5.0 * 8, rel=0.15)


def test_a_fixed_tgc_slope_levels_tissue_of_that_attenuation_only():
    bank = PatientBank([slab_patient([("soft_tissue", 140)], 120, 0.001)])
    probe = ProbeSpec(kind="linear", frequency_mhz=5.0, depth_m=0.13, width_m=0.04, image_height=261, image_width=128)
    poses, idx = poses_at(0.002, 4, z=-0.03, z_step=0.02), torch.zeros(4, dtype=torch.long)
    alpha = TissueTable.load().rows["soft_tissue"].attenuation_db_cm_mhz
    depth_cm = probe.scan_lines()[2].numpy() * 100
    near, far = (depth_cm >= 3) & (depth_cm < 4), (depth_cm >= 11) & (depth_cm < 12)

    def fall(slope: float) -> float:
        image = Renderer(bank, probe, config=RendererConfig(tgc_db_cm_mhz=slope)).render(poses, idx).numpy()
        return float(image[:, near].mean() / image[:, far].mean())

    assert fall(alpha) == pytest.approx(1.0, abs=0.1)
    assert fall(0.5 * alpha) > 1.5  # too little: the image darkens with depth


def tilted(angle_deg: float, y: float) -> torch.Tensor:
    """A pose looking down +y from depth y, its beam tilted by angle_deg within the image plane."""
    down = quat_to_matrix(torch.tensor(DOWN_Y))
    a = math.radians(angle_deg)
    about_probe_y = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    return torch.cat([torch.tensor([0.0, y, 0.0]), matrix_to_quat(down @ about_probe_y)])[None]


def test_bone_echo_falls_with_the_angle_of_incidence():
    """A flat bone surface seen at 0, 20 and 40 degrees: the echo falls, as cos(theta)^specular_power
    of what it is with the angle law off (which leaves only how the samples split the interface)."""
    bank = PatientBank([slab_patient([("soft_tissue", 200), ("bone", 40)], 400, 0.0001)])
    probe = ProbeSpec(kind="linear", frequency_mhz=7.5, depth_m=0.03, width_m=0.01, image_height=301, image_width=51,
                      elevation_m=0.0, aperture_m=0.03, focus_m=0.02)  # fmt: skip
    table = QUIET.replace(bone={"echogenicity_db": None})

    def echo(angle: float, power: float) -> float:
        r = Renderer(bank, probe, table, RendererConfig(tgc_db_cm_mhz=0.0, specular_power=power))
        level = r.render_lines(tilted(angle, 0.002), torch.zeros(1, dtype=torch.long))[0]
        return float((10 ** (level / 20)).amax(0).median())

    power = RendererConfig().specular_power
    echoes = [echo(angle, power) for angle in (0.0, 20.0, 40.0)]
    assert echoes[0] > echoes[1] > echoes[2]
    for angle in (20.0, 40.0):
        expected = math.cos(math.radians(angle)) ** power
        assert echo(angle, power) / echo(angle, 0.0) == pytest.approx(expected, rel=0.05), angle


def test_the_elevation_lens_focuses_the_slice():
    """The slice thickness is elevation_m at the lens focus and widens beyond as a Gaussian beam (by
    sqrt(2) one Rayleigh range away); a thin bone plate 1.3 mm beside the image plane is missed at
    the focus and caught 3 cm deeper, where the slice is 2.5 mm thick, by the same 5 rays. An
    unfocused slice of the same thickness misses it at both depths."""
    spacing = 0.0002
    probe = ProbeSpec(kind="linear", frequency_mhz=7.5, depth_m=0.05, width_m=0.01, image_height=250, image_width=16,
                      elevation_m=0.0012, elevation_rays=5, elevation_focus_m=0.01)  # fmt: skip
    one_way_radius = math.sqrt(2) * 0.0012 / (2 * math.sqrt(math.log(2)))
    rayleigh = math.pi * one_way_radius**2 / probe.wavelength_m
    widths = probe.slice_fwhm_m(torch.tensor([0.01, 0.01 + rayleigh, 0.04], dtype=torch.float64))
    assert widths[0].item() == pytest.approx(0.0012, rel=1e-9)
    assert widths[1].item() == pytest.approx(math.sqrt(2) * 0.0012, rel=1e-9)
    assert 0.0022 < widths[2].item() < 0.0028
    offsets = probe.elevation_offsets(torch.tensor([0.0, 0.01, 0.04]))
    assert offsets.shape == (5, 3) and torch.allclose(offsets.sum(0), torch.zeros(3), atol=1e-9)

    patient = slab_patient([("soft_tissue", 260)], 120, spacing)
    beside = 66  # z voxel 66 of 120 (centre 59.5): the plate is 1.0-1.6 mm beside the image plane
    for depth_vox in (50, 200):  # plates 1 cm (the focus) and 4 cm below the face at y = 0
        patient.tissue[:, depth_vox : depth_vox + 5, beside - 1 : beside + 2] = TISSUE_ID["bone"]
    bank = PatientBank([patient])

    def plate_echoes(focus: float | None) -> tuple[float, float]:
        p = ProbeSpec(**{**probe.__dict__, "elevation_focus_m": focus})
        r = Renderer(bank, p, QUIET, RendererConfig(tgc_db_cm_mhz=0.0))
        env = 10 ** (r.render_lines(poses_at(0.0), torch.zeros(1, dtype=torch.long))[0] / 20)
        rows = torch.arange(p.n_samples) * p.sample_spacing_m
        near, deep = (env[(rows - d).abs() < 0.002].max().item() for d in (0.01, 0.04))
        return near, deep

    near, deep = plate_echoes(0.01)
    assert near < 1e-3 and deep > 0.02, (near, deep)
    assert max(plate_echoes(None)) < 1e-3
