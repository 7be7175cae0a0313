"""sim.ultrasound.realism: grain size, local contrast and bad input on synthetic speckle; the
realism report on the real reference image (pydicom-data)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from sim.errors import InputError
from sim.ultrasound import realism

FWHM_PER_SIGMA = 4 * math.sqrt(math.log(2))  # white noise through a Gaussian of sigma: autocovariance FWHM


def gaussian_speckle(axial_mm: float, lateral_mm: float, pixel_mm: float = 0.2, n: int = 800) -> np.ndarray:
    """(n, n) white noise filtered by a Gaussian whose autocovariance FWHM is axial_mm down the rows
    and lateral_mm across, scaled to mean 100, std 20."""
    sigma = (axial_mm / FWHM_PER_SIGMA / pixel_mm, lateral_mm / FWHM_PER_SIGMA / pixel_mm)
    x = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((n, n)), sigma, mode="wrap")
    return 100 + 20 * x / x.std()


def test_isotropic_grain_matches_the_analytic_fwhm():
    stats = realism.measure(gaussian_speckle(1.5, 1.5), 0.2, (0, 800, 0, 800), patch_mm=20)
    assert stats.axial_grain_mm == pytest.approx(1.5, rel=0.03)
    assert stats.lateral_grain_mm == pytest.approx(1.5, rel=0.03)


def test_anisotropic_grain_axial_and_lateral():
    stats = realism.measure(gaussian_speckle(1.4, 3.5), 0.2, (0, 800, 0, 800), patch_mm=20)
    assert stats.axial_grain_mm == pytest.approx(1.4, rel=0.03)
    assert stats.lateral_grain_mm == pytest.approx(3.5, rel=0.03)


def test_default_patches_underestimate_by_their_mean_removal_only():
    # 8 mm patches (the default, kept small to stay in one tissue) narrow the grains by < 10 %
    stats = realism.measure(gaussian_speckle(1.4, 3.5), 0.2, (0, 800, 0, 800))
    assert 0.9 < stats.lateral_grain_mm / 3.5 < 1.0
    assert 0.9 < stats.axial_grain_mm / 1.4 < 1.0


def test_rayleigh_envelope_contrast():
    rng = np.random.default_rng(1)
    envelope = np.abs(rng.standard_normal((400, 400)) + 1j * rng.standard_normal((400, 400)))
    stats = realism.measure(40 * envelope, 0.2, (0, 400, 0, 400))
    assert stats.local_contrast == pytest.approx(realism.RAYLEIGH_CONTRAST, rel=0.04)
    assert 1 / stats.local_contrast == pytest.approx(1.91, rel=0.04)


def test_depth_profile_of_uniform_speckle_is_flat():
    stats = realism.measure(gaussian_speckle(1.0, 1.0), 0.2, (0, 800, 0, 800))
    assert stats.depth_cm[0] == 0.5 and len(stats.depth_cm) == 16
    assert max(stats.depth_mean) / min(stats.depth_mean) < 1.05


@pytest.mark.parametrize(
    "image, pixel_mm, roi, named",
    [
        (np.zeros((4, 50, 50)), 0.2, (0, 50, 0, 50), "2-D"),
        (np.zeros(50), 0.2, (0, 50, 0, 50), "2-D"),
        (np.zeros((50, 50)), 0.0, (0, 50, 0, 50), "pixel_mm"),
        (np.zeros((50, 50)), float("nan"), (0, 50, 0, 50), "pixel_mm"),
        (np.zeros((50, 50)), 0.2, (0, 60, 0, 50), "roi"),
        (np.zeros((50, 50)), 0.2, (-1, 50, 0, 50), "roi"),
        (np.zeros((50, 50)), 0.2, (10, 10, 0, 50), "roi"),
    ],
)
def test_bad_input_is_named(image, pixel_mm, roi, named):
    with pytest.raises(InputError, match=named):
        realism.measure(image, pixel_mm, roi)


def test_mask_of_the_wrong_shape_is_named():
    with pytest.raises(InputError, match="valid mask"):
        realism.measure(np.ones((50, 50)), 0.2, (0, 50, 0, 50), valid=np.ones((40, 50), bool))


@pytest.mark.skipif(not realism.reference_available(), reason="needs pydicom-data (pip install pydicom-data)")
def test_realism_report_on_the_reference_image():
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "realism", "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for side in ("real", "simulated"):
        for key in ("axial_grain_mm", "lateral_grain_mm", "local_contrast", "soft_tissue_mean", "depth_profile"):
            assert key in report[side]
    assert report["pixel_mm"]["real"] == pytest.approx(0.383, abs=0.001)
    assert 1.0 < report["real"]["axial_grain_mm"] < report["real"]["lateral_grain_mm"] < 5.0
    assert set(report["targets_met"]) == {
        "axial_grain_within_25pct",
        "lateral_grain_within_25pct",
        "lateral_2_to_3x_axial",
        "depth_flat_3_12cm_within_15pct",
        "local_contrast_within_25pct",
    }
    assert all(report["targets_met"].values()), report  # the phantom imaged as the reference was meets them
