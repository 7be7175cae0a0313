"""Image statistics that compare a B-mode image with a real scanner's, by one code path for both.

`measure` takes a grayscale image (H, W) in 0..255, its square pixel size in mm, a region of
interest (a pixel rectangle in soft tissue) and optionally a mask of valid pixels (inside the
sector, no overlays). It tiles the ROI into square patches of `patch_mm`, keeps those that lie
wholly on valid pixels and look like soft tissue (`soft_tissue_patches`), and reports:

- speckle grain size, axial and lateral (mm): the full width at half maximum of the patches'
  normalised autocovariance (mean removed per patch, averaged over patches), along the image
  columns (axial) and rows (lateral). Approximation: the beam is taken as vertical, which for a
  sector image holds near its centre line; the ROI should be kept to the central part of the
  sector (`central_roi`), where a tilt of at most ~10 degrees widens the axial FWHM by a few %.
- local contrast: the median over patches of std / mean (1 / speckle SNR; 0.52 for the envelope
  of fully developed speckle).
- soft-tissue mean: the mean over the soft-tissue patches (0..255).
- depth profile: the mean of the soft-tissue patches binned by their centre's depth (1 cm bins).

`load_reference` reads the real reference image (ALOKA SSD-4000, 5 MHz convex, abdomen) from the
`pydicom-data` package.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import math
from dataclasses import dataclass

import numpy as np

from sim.errors import InputError

REFERENCE_FILE = "gdcm-US-ALOKA-16.dcm"
RAYLEIGH_CONTRAST = math.sqrt(4 / math.pi - 1)  # std / mean of a Rayleigh envelope: 0.523 (SNR 1.91)


@dataclass(frozen=True)
class ImageStats:
    """Statistics of one image's soft tissue (see the module docstring).

    axial_grain_mm, lateral_grain_mm: autocovariance FWHM, mm. local_contrast: median std / mean.
    soft_tissue_mean: 0..255. depth_cm, depth_mean: bin centres (cm) and means (0..255), same length.
    patches: how many patches the figures come from.
    """

    axial_grain_mm: float
    lateral_grain_mm: float
    local_contrast: float
    soft_tissue_mean: float
    depth_cm: tuple[float, ...]
    depth_mean: tuple[float, ...]
    patches: int

    def to_dict(self) -> dict:
        return {
            "axial_grain_mm": round(self.axial_grain_mm, 3),
            "lateral_grain_mm": round(self.lateral_grain_mm, 3),
            "lateral_over_axial": round(self.lateral_grain_mm / self.axial_grain_mm, 3),
            "local_contrast": round(self.local_contrast, 3),
            "soft_tissue_mean": round(self.soft_tissue_mean, 2),
            "depth_profile": {f"{d:.1f}": round(m, 2) for d, m in zip(self.depth_cm, self.depth_mean)},
            "patches": self.patches,
        }


@dataclass(frozen=True)
class Reference:
    """The real image: gray (H, W) float 0..255, pixel_mm, valid (H, W) bool (tissue pixels: not
    black outside the sector, not a coloured overlay), depth0_row: the row of zero depth (the face)."""

    gray: np.ndarray
    pixel_mm: float
    valid: np.ndarray
    depth0_row: float
    frequency_mhz: float


def check_image(image: np.ndarray, pixel_mm: float, roi: tuple[int, int, int, int]) -> np.ndarray:
    """The image as float64 (H, W); InputError naming a non-2-D image, a pixel size that is not a
    positive number, or an ROI (row0, row1, col0, col1; half-open) that is not inside the image."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"realism image: expected a 2-D grayscale array (H, W), got shape {image.shape}")
    if not (isinstance(pixel_mm, (int, float)) and math.isfinite(pixel_mm) and pixel_mm > 0):
        raise InputError(f"realism pixel_mm: expected a positive pixel size in mm, got {pixel_mm!r}")
    r0, r1, c0, c1 = roi
    h, w = image.shape
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise InputError(f"realism roi: expected (row0, row1, col0, col1) inside the {h} x {w} image, got {roi}")
    return image.astype(np.float64)


def patch_origins(roi: tuple[int, int, int, int], size: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping size x size patches that fit in the ROI."""
    r0, r1, c0, c1 = roi
    return [(r, c) for r in range(r0, r1 - size + 1, size) for c in range(c0, c1 - size + 1, size)]


def soft_tissue_patches(
    image: np.ndarray, valid: np.ndarray, origins: list[tuple[int, int]], size: int
) -> list[tuple[int, int]]:
    """The patches wholly on valid pixels whose mean is within a factor 2 of the median patch mean
    (of the valid patches brighter than 5 % of full scale): that drops anechoic fluid (a bladder,
    vessels) and bright specular reflectors (bone, fascia), which are not speckle."""
    whole = [(r, c) for r, c in origins if valid[r : r + size, c : c + size].all()]
    means = np.array([image[r : r + size, c : c + size].mean() for r, c in whole])
    echoic = means[means > 0.05 * 255]
    if len(echoic) == 0:
        return []
    median = float(np.median(echoic))
    return [o for o, m in zip(whole, means) if 0.5 * median <= m <= 2 * median]


def autocovariance(patch: np.ndarray) -> np.ndarray:
    """The normalised autocovariance (2N-1, 2M-1) of a patch (N, M), zero lag at the centre: mean
    removed, each lag divided by its overlap count (unbiased), 1 at zero lag."""
    n, m = patch.shape
    x = patch - patch.mean()
    f = np.fft.rfft2(x, s=(2 * n, 2 * m))
    acov = np.fft.fftshift(np.fft.irfft2(f * f.conj(), s=(2 * n, 2 * m)))[1:, 1:]
    ones = np.fft.rfft2(np.ones_like(x), s=(2 * n, 2 * m))
    counts = np.fft.fftshift(np.fft.irfft2(ones * ones.conj(), s=(2 * n, 2 * m)))[1:, 1:]
    acov = acov / np.maximum(counts.round(), 1)
    return acov / acov[n - 1, m - 1]


def fwhm_px(profile: np.ndarray) -> float:
    """Full width at half maximum (pixels) of a one-sided profile (lags 0, 1, ...; profile[0] = 1),
    the half-maximum crossing linearly interpolated; nan if it never falls to half."""
    below = np.nonzero(profile < 0.5)[0]
    if len(below) == 0:
        return math.nan
    k = below[0]
    a, b = profile[k - 1], profile[k]
    return float(2 * (k - 1 + (a - 0.5) / (a - b)))


def measure(
    image: np.ndarray,
    pixel_mm: float,
    roi: tuple[int, int, int, int],
    valid: np.ndarray | None = None,
    depth0_row: float = 0.0,
    patch_mm: float = 8.0,
) -> ImageStats:
    """Statistics of `image` (H, W; 0..255) with square pixels of `pixel_mm` in its soft tissue.

    roi: (row0, row1, col0, col1) half-open pixel rectangle; rows run with depth (the beam),
    columns across it. valid: (H, W) bool, pixels that show tissue (None: all). depth0_row: the
    row where depth is 0 (the probe face). patch_mm: the side of the square patches (about 3
    lateral grains, so each patch's autocovariance reaches well past half maximum).
    """
    image = check_image(image, pixel_mm, roi)
    valid = np.ones(image.shape, bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != image.shape:
        raise InputError(f"realism valid mask: expected shape {image.shape}, got {valid.shape}")
    size = max(8, round(patch_mm / pixel_mm))
    patches = soft_tissue_patches(image, valid, patch_origins(roi, size), size)
    if not patches:
        raise InputError(f"realism roi {roi}: no {size} x {size} px patch in it is wholly valid soft tissue")
    acov = np.mean([autocovariance(image[r : r + size, c : c + size]) for r, c in patches], axis=0)
    centre = size - 1
    # the lags beyond half the patch rest on few pixel pairs: search for the half maximum within them only
    axial = fwhm_px(acov[centre : centre + size // 2, centre])
    lateral = fwhm_px(acov[centre, centre : centre + size // 2])
    blocks = [image[r : r + size, c : c + size] for r, c in patches]
    means = np.array([b.mean() for b in blocks])
    contrast = float(np.median([b.std() / max(b.mean(), 1e-9) for b in blocks]))
    depth = np.array([(r + (size - 1) / 2 - depth0_row) * pixel_mm / 10 for r, _ in patches])
    bins = np.floor(depth).astype(int)
    depth_cm = tuple(float(b + 0.5) for b in np.unique(bins))
    depth_mean = tuple(float(means[bins == b].mean()) for b in np.unique(bins))
    return ImageStats(
        axial_grain_mm=float(axial * pixel_mm),
        lateral_grain_mm=float(lateral * pixel_mm),
        local_contrast=contrast,
        soft_tissue_mean=float(means.mean()),
        depth_cm=depth_cm,
        depth_mean=depth_mean,
        patches=len(patches),
    )


def central_roi(valid: np.ndarray, fraction: float = 0.5) -> tuple[int, int, int, int]:
    """The ROI for a sector image: every row that has valid pixels, the central `fraction` of the
    valid columns (where the beams are nearly vertical; see the module docstring)."""
    rows = np.nonzero(valid.any(1))[0]
    cols = np.nonzero(valid.any(0))[0]
    half = (cols[-1] - cols[0] + 1) * fraction / 2
    mid = (cols[0] + cols[-1] + 1) / 2
    return int(rows[0]), int(rows[-1]) + 1, int(round(mid - half)), int(round(mid + half))


def reference_available() -> bool:
    """Whether the `pydicom-data` package (module `data_store`) is installed."""
    return importlib.util.find_spec("data_store") is not None


def load_reference() -> Reference:
    """The real reference image from `pydicom-data` (InputError naming `pip install pydicom-data`
    when it is missing).

    Rule, all read from the file: the palette-colour pixels go through the file's colour lookup
    table (16-bit, scaled to 0..255); the image is cropped to the first ultrasound region of 2-D
    tissue data (the dual display's left image; its physical delta gives the pixel size, its
    reference pixel the row of zero depth); valid pixels are gray (R, G, B within one level: the
    scanner's coloured text and scale marks drop out), outside any other region (the gray bar) and
    not in the black outside the sector (a 7 x 7 px mean of 0).
    """
    if not reference_available():
        raise InputError("the realism reference image needs pydicom-data: pip install pydicom-data")
    import pydicom
    from pydicom.pixels import apply_color_lut
    from scipy import ndimage

    path = importlib.resources.files("data_store") / "data" / REFERENCE_FILE
    with importlib.resources.as_file(path) as file:
        ds = pydicom.dcmread(file)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]  # a cine loop: its first frame
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds).astype(np.float64)
    elif ds.PhotometricInterpretation in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        rgb = pydicom.pixels.convert_color_space(pixels, ds.PhotometricInterpretation, "RGB").astype(np.float64)
    else:  # MONOCHROME1/2: one plane
        mono = pixels.astype(np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            mono = mono.max() - mono
        rgb = np.repeat(mono[..., None], 3, -1)
    rgb = rgb * 255 / rgb.max()
    regions = list(ds.SequenceOfUltrasoundRegions)
    tissue = next(r for r in regions if r.RegionSpatialFormat == 1 and r.RegionDataType == 1)
    y0, y1 = int(tissue.RegionLocationMinY0), int(tissue.RegionLocationMaxY1)
    x0, x1 = int(tissue.RegionLocationMinX0), int(tissue.RegionLocationMaxX1)
    others = np.zeros(rgb.shape[:2], bool)
    for r in regions:
        if r is not tissue:
            others[
                r.RegionLocationMinY0 : r.RegionLocationMaxY1 + 1, r.RegionLocationMinX0 : r.RegionLocationMaxX1 + 1
            ] = True
    crop = np.s_[y0 : y1 + 1, x0 : x1 + 1]
    rgb = rgb[crop]
    gray = rgb.mean(-1)
    valid = (rgb.max(-1) - rgb.min(-1) <= 1.0) & ~others[crop] & (ndimage.uniform_filter(gray, 7) > 0)
    if tissue.PhysicalUnitsXDirection != 3 or tissue.PhysicalUnitsYDirection != 3:  # 3: cm
        raise InputError(f"{REFERENCE_FILE}: expected region units in cm")
    pixel_mm = 10 * float(tissue.PhysicalDeltaY)
    # the reference pixel is given relative to the region's corner (DICOM PS3.3 C.8.5.5.1)
    depth0_row = float(tissue.ReferencePixelY0) - 10 * float(tissue.ReferencePixelPhysicalValueY) / pixel_mm
    return Reference(gray, pixel_mm, valid, depth0_row, tissue.TransducerFrequency / 1000)
