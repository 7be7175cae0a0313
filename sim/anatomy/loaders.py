"""Load a CT (NIfTI or DICOM) and TotalSegmentator labels into a `Patient`.

Every input is brought to one convention before anything else happens: RAS-ordered axes with
positive spacing (the closest canonical orientation; oblique scans keep their small rotation) and
an affine in metres (NIfTI and DICOM store millimetres). Label grids must equal the CT grid;
tissue-type and body masks may lie on any grid and are resampled onto it through the affines.

Bad input raises `InputError` naming the file or argument and what was expected.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
import pydicom
import yaml
from pydicom.errors import InvalidDicomError
from scipy import ndimage, sparse

from sim.anatomy.derive import check_derivable
from sim.anatomy.patient import Patient
from sim.anatomy.tissue_map import TissueMap
from sim.errors import InputError, require
from sim.resources import conf_dir

T = TypeVar("T")

DEFAULT_CLASS_MAP = conf_dir() / "anatomy" / "totalseg_v2_total.yaml"
MAX_BYTES_ENV = "SONOLAB_MAX_VOLUME_BYTES"
MEMORY_FRACTION = 0.5  # of the RAM available now: leave room for derive() and the caller
# Peak working set per output voxel while building a patient: float32 CT (4), int64 HU-class
# index inside TissueMap (8), float32 interpolation buffers (4 + 4), uint8 labels, tissue, body.
BYTES_PER_VOXEL = 24
GRID_ATOL_M = 1e-5  # two grids are the same when their affines agree to 0.01 mm
NIFTI_SUFFIXES = (".nii.gz", ".nii")
NIFTI_UNITS_TO_M = {"mm": 1e-3, "unknown": 1e-3, "meter": 1.0, "micron": 1e-6}
NIFTI_READ_ERRORS = (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error)
DICOM_PIXEL_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CUBIC_PAD = 2  # source voxels around a label's box: the support of a 4-tap cubic

# CT plausibility: an MR or a rescaled image given as a CT would otherwise become bone and air.
# Air reads about -1000 HU (noise reaches -1100), cortical bone and contrast stay below ~3000 HU;
# above HU_RANGE only metal (a small fraction). A constant fill below HU_RANGE is the scanner's
# out-of-field padding (e.g. -2048 or -3024) and is left out of the statistics.
HU_RANGE = (-1100.0, 4000.0)
HU_MAX_OUTSIDE_FRACTION = 0.01  # of the non-padding voxels: metal, and noise below the air level
# Every body CT holds fat (about -100 HU), lung or air: its 1st percentile is negative. MR and
# rescaled images (0..N) are not.
HU_LOW_PERCENTILE = 1.0
HU_LOW_PERCENTILE_MAX = -50.0
# Where air or lung (below AIR_OR_LUNG_HU) fills at least AIR_MIN_FRACTION of the volume, its low
# end must be near -1000 HU: a scaled image has its air elsewhere.
AIR_OR_LUNG_HU = -300.0
AIR_MIN_FRACTION = 0.01
AIR_LOW_END_HU = (-1100.0, -850.0)
SOFT_TISSUE_HU = (-200.0, 200.0)
SOFT_TISSUE_MIN_FRACTION = 0.05  # a body CT is mostly soft tissue (the shipped example: 60 %)
HU_STATS_SAMPLES = 1 << 22  # voxels sampled (evenly strided) for the statistics of a large CT
DICOM_POSITION_TOL_MM = 1e-3
DICOM_SPACING_RTOL = 0.01  # slice gaps may differ by 1 % (plus DICOM_POSITION_TOL_MM)


@dataclass
class Volume:
    """A volume on a grid: `data` (I, J, K), `affine` (4, 4) voxel -> RAS metres, `source` for errors."""

    data: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in metres."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


# ---------------------------------------------------------------------------------------------
# Memory


def memory_limit(max_bytes: int | None = None) -> int:
    """Bytes a loader may allocate: min(MEMORY_FRACTION x available RAM, `max_bytes` or $SONOLAB_MAX_VOLUME_BYTES)."""
    limit = int(MEMORY_FRACTION * _available_memory())
    if max_bytes is None and os.environ.get(MAX_BYTES_ENV):
        try:
            max_bytes = int(float(os.environ[MAX_BYTES_ENV]))
        except ValueError:
            raise InputError(
                f"${MAX_BYTES_ENV}: expected a number of bytes, got {os.environ[MAX_BYTES_ENV]!r}"
            ) from None
    if max_bytes is not None:
        require(max_bytes > 0, "max_bytes", "a positive number of bytes", max_bytes)
        limit = min(limit, int(max_bytes))
    return limit


def _available_memory() -> int:
    """RAM available now in bytes (Linux MemAvailable, else free physical pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(shape: tuple[int, ...], bytes_per_voxel: float, what: str, max_bytes: int | None) -> None:
    """Raise `InputError` before allocating a grid of `shape` whose working set would exceed the limit."""
    need = float(np.prod(np.asarray(shape, dtype=np.float64))) * bytes_per_voxel
    limit = memory_limit(max_bytes)
    if need > limit:
        raise InputError(
            f"{what}: a {tuple(int(s) for s in shape)} grid needs about {need / 2**30:.2f} GiB, more than the "
            f"limit of {limit / 2**30:.2f} GiB (min of {MEMORY_FRACTION:.0%} of available RAM and max_bytes / "
            f"${MAX_BYTES_ENV}); expected a smaller volume or a coarser spacing_mm"
        )


# ---------------------------------------------------------------------------------------------
# Reading files


def _existing(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """`path` as a Path, or `InputError` if it is missing or of the wrong kind."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} {p}: file or folder not found")
    kind_ok = p.is_dir() if folder else p.is_file()
    require(kind_ok, f"{what} {p}", "a folder" if folder else "a file", "a file" if folder else "a folder")
    return p


def _canonical(data: np.ndarray, affine_mm: np.ndarray, unit_m: float, source: str) -> Volume:
    """Reorder/flip axes to RAS with positive spacing and convert the affine to metres."""
    if not np.isfinite(affine_mm).all() or abs(np.linalg.det(affine_mm[:3, :3])) < 1e-12:
        raise InputError(
            f"{source}: expected an invertible voxel-to-world affine (finite, "
            "non-zero voxel sizes along independent axes), "
            f"got {affine_mm.tolist()}"
        )
    ornt = nib.orientations.io_orientation(affine_mm)
    affine = affine_mm @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    data = np.ascontiguousarray(nib.orientations.apply_orientation(data, ornt))
    affine[:3, :] *= unit_m
    return Volume(data, affine, source)


def read_nifti(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> Volume:
    """Read a 3-D NIfTI file as a canonical `Volume` (data in its stored dtype after scaling).

    A trailing singleton 4th axis is dropped. The memory needed is checked from the header first.
    """
    p = _existing(path, what)
    img = _nifti_call(nib.load, p, what)
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    require(len(shape) == 3, f"{what} {p}", "a 3-D volume", f"shape {img.shape}")
    _check_header_spacing(img, p, what)
    check_memory(shape, max(img.get_data_dtype().itemsize, 4), f"{what} {p}", max_bytes)
    data = _nifti_call(lambda _: np.asanyarray(img.dataobj).reshape(shape), p, what)
    unit = img.header.get_xyzt_units()[0]
    return _canonical(data, img.affine.astype(np.float64), NIFTI_UNITS_TO_M.get(unit, 1e-3), f"{what} {p}")


def _check_header_spacing(img: nib.spatialimages.SpatialImage, p: Path, what: str) -> None:
    """`InputError` when the affine comes from the header's voxel sizes (no sform) and one is not positive and finite.

    nibabel "fixes" such headers while loading (a zero voxel size becomes 1 mm, a negative one
    its absolute value), so the header is read again as stored.
    """
    if not isinstance(img.header, nib.Nifti1Header) or int(img.header["sform_code"]) != 0:
        return
    stored = _nifti_call(lambda _: _raw_header(p, type(img.header)), p, what)
    zooms = np.asarray(stored["pixdim"][1:4], np.float64)
    require(
        bool(np.all(np.isfinite(zooms) & (zooms > 0))),
        f"{what} {p}",
        "positive voxel sizes in the header's pixdim",
        zooms.tolist(),
    )


def _raw_header(p: Path, header_class: type) -> nib.Nifti1Header:
    """The NIfTI header of `p` as stored, without nibabel's fixes."""
    with nib.openers.ImageOpener(p) as f:
        return header_class.from_fileobj(f, check=False)


def _nifti_call(fn: Callable[[Path], T], p: Path, what: str) -> T:
    """`fn(p)`, turning nibabel's and gzip's errors for a corrupt or truncated file into `InputError`."""
    try:
        return fn(p)
    except NIFTI_READ_ERRORS as e:
        raise InputError(
            f"{what} {p}: expected a readable NIfTI file (.nii or .nii.gz), got a corrupt or truncated one ({e})"
        ) from None


def _as_hu(vol: Volume) -> Volume:
    """CT values as float32 Hounsfield units; `InputError` on NaN, infinity or values that are not HU."""
    hu = vol.data.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(hu)))
    if bad:
        raise InputError(f"{vol.source}: expected finite Hounsfield units, found {bad} NaN or infinite voxels")
    check_derivable(hu.shape, vol.source)  # before the statistics: a few voxels are no CT at any spacing
    check_hounsfield(hu, vol.source)
    return Volume(hu, vol.affine, vol.source)


def check_hounsfield(hu: np.ndarray, source: str) -> None:
    """`InputError` naming `source` unless the finite values `hu` look like a CT in Hounsfield units.

    See HU_RANGE and the constants after it: fat, lung or air must give negative values, air
    must sit near -1000 HU, soft tissue must be present and almost every voxel in HU_RANGE.
    """
    flat = hu.reshape(-1)
    values = flat[:: max(1, flat.size // HU_STATS_SAMPLES)]
    lowest = values.min()
    if lowest < HU_RANGE[0]:
        values = values[values != lowest]  # a constant out-of-field padding
    if values.size == 0:
        raise InputError(f"{source}: expected a CT in Hounsfield units, found one value ({float(lowest):g}) everywhere")
    low = float(np.percentile(values, HU_LOW_PERCENTILE))
    air = values[values < AIR_OR_LUNG_HU]
    air_low = float(np.percentile(air, HU_LOW_PERCENTILE)) if air.size >= AIR_MIN_FRACTION * values.size else None
    outside = float(np.mean((values < HU_RANGE[0]) | (values > HU_RANGE[1])))
    soft = float(np.mean((values >= SOFT_TISSUE_HU[0]) & (values <= SOFT_TISSUE_HU[1])))
    problems = []
    if low > HU_LOW_PERCENTILE_MAX:
        problems.append(
            f"{HU_LOW_PERCENTILE:g}st percentile {low:g} (no fat, lung or air below {HU_LOW_PERCENTILE_MAX:g} HU)"
        )
    if air_low is not None and not AIR_LOW_END_HU[0] <= air_low <= AIR_LOW_END_HU[1]:
        problems.append(f"air or lung at {air_low:g} HU (expected {AIR_LOW_END_HU[0]:g}..{AIR_LOW_END_HU[1]:g})")
    if outside > HU_MAX_OUTSIDE_FRACTION:
        problems.append(f"{outside:.1%} of voxels outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g} HU")
    if soft < SOFT_TISSUE_MIN_FRACTION:
        problems.append(f"only {soft:.1%} of voxels in the soft-tissue range")
    if problems:
        raise InputError(
            f"{source}: expected CT in Hounsfield units (air near -1000 HU, "
            f"soft tissue {SOFT_TISSUE_HU[0]:g}..{SOFT_TISSUE_HU[1]:g} HU), "
            f"found values {float(values.min()):g}..{float(values.max()):g} with {'; '.join(problems)}; "
            "is this an MR or a rescaled image?"
        )


def _as_ids(vol: Volume) -> Volume:
    """Label values as int64 ids; `InputError` unless they are non-negative integers."""
    data = vol.data
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all() or np.any(data != np.round(data)):
            raise InputError(f"{vol.source}: expected integer label ids, found non-integer values")
    ids = data.astype(np.int64)
    if ids.min(initial=0) < 0:
        raise InputError(f"{vol.source}: expected non-negative label ids, found {int(ids.min())}")
    return Volume(ids, vol.affine, vol.source)


def _nifti_files(folder: Path, what: str) -> list[tuple[str, Path]]:
    """(name, path) of the NIfTI files in `folder`, sorted by name; the name is the file stem."""
    files = []
    for p in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if p.name.endswith(s)), None)
        if suffix and p.is_file() and not p.name.startswith("."):
            files.append((p.name[: -len(suffix)], p))
    require(bool(files), f"{what} {folder}", "a folder of <name>.nii.gz masks", "no .nii or .nii.gz files")
    return files


def default_name(*paths: str | os.PathLike | None) -> str:
    """A patient's name from its first given input: the file's stem (no .nii/.nii.gz) or the folder's name."""
    name = Path(next(p for p in paths if p is not None)).expanduser().name
    return next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.endswith(s)), name)


# ---------------------------------------------------------------------------------------------
# Class maps


def load_class_map(class_map: str | os.PathLike | dict | None) -> dict[int, str]:
    """Label id -> structure name.

    `None` gives the built-in TotalSegmentator v2 "total" map. A dict or a .json/.yaml file may be
    flat ({id: name}) or TotalSegmentator's class_map.json layout, whose "total" entry is used.
    """
    what = "class_map"
    if class_map is None:
        class_map = DEFAULT_CLASS_MAP
    if not isinstance(class_map, dict):
        p = _existing(class_map, what)
        what = f"class_map {p}"
        try:
            class_map = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(f"{what}: expected JSON or YAML mapping label ids to names ({e})") from None
    require(isinstance(class_map, dict), what, "a mapping of label ids to names", type(class_map).__name__)
    if "total" in class_map:
        class_map = class_map["total"]
    try:
        out = {int(k): str(v) for k, v in class_map.items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"{what}: expected integer label ids as keys, got {list(class_map)[:5]}") from None
    require(all(k > 0 for k in out), what, "label ids above 0 (0 is background)", sorted(out)[:5])
    return out


# ---------------------------------------------------------------------------------------------
# Grids and resampling


def _require_same_grid(vol: Volume, ref: Volume) -> None:
    """`InputError` unless `vol` lies on exactly the grid of `ref` (shape and affine)."""
    same = vol.data.shape == ref.data.shape and np.allclose(vol.affine, ref.affine, atol=GRID_ATOL_M, rtol=0)
    if not same:
        raise InputError(
            f"{vol.source}: expected the grid of {ref.source} (shape {ref.data.shape}, spacing "
            f"{np.round(ref.spacing * 1e3, 3).tolist()} mm, "
            f"origin {np.round(ref.affine[:3, 3] * 1e3, 2).tolist()} mm), "
            f"got shape {vol.data.shape}, spacing {np.round(vol.spacing * 1e3, 3).tolist()} mm, "
            f"origin {np.round(vol.affine[:3, 3] * 1e3, 2).tolist()} mm"
        )


def isotropic_grid(
    shape: tuple[int, int, int], affine: np.ndarray, spacing_m: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid with `spacing_m` voxels covering the same field of view as (`shape`, `affine`).

    The axes keep their directions; the outer voxel faces stay where they were (corner aligned).
    Returns (shape, affine), affine in metres.
    """
    old = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / old
    new_shape = tuple(int(n) for n in np.maximum(1, np.round(np.asarray(shape) * old / spacing_m)))
    out = np.eye(4)
    out[:3, :3] = directions * spacing_m
    out[:3, 3] = affine[:3, 3] + directions @ ((spacing_m - old) / 2)
    return new_shape, out


def _index_map(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """(3, 4) map from destination voxel index to source voxel index."""
    return (np.linalg.inv(src_affine) @ dst_affine)[:3]


def _transform(data: np.ndarray, m: np.ndarray, shape: tuple[int, ...], order: int, mode: str, dtype) -> np.ndarray:
    """`ndimage.affine_transform` with the faster diagonal path when `m` only scales and shifts."""
    matrix = m[:, :3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9):
        matrix = np.diag(matrix)
    return ndimage.affine_transform(data, matrix, m[:, 3], output_shape=shape, order=order, mode=mode, output=dtype)


def resample_linear(vol: Volume, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of `vol` (float32 result) onto a grid; edge values extend outward."""
    return _transform(vol.data, _index_map(vol.affine, affine), shape, 1, "nearest", np.float32)


def resample_nearest(vol: Volume, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume onto any grid; outside the source is 0.

    "grid-constant" treats the source as extending to its outer voxel faces, so a target voxel
    centred on an edge voxel (up to rounding) still reads it.
    """
    return _transform(vol.data, _index_map(vol.affine, affine), shape, 0, "grid-constant", vol.data.dtype)


def _catmull_rom_matrix(n_out: int, scale: float, shift: float, n_in: int) -> sparse.csr_matrix:
    """(n_out, n_in) weights sampling a 1-D signal at `scale * t + shift` (source index units).

    Catmull-Rom cubic: it passes through the samples (thin structures survive thresholding) and
    has a continuous slope (no staircase). Taps outside 0..n_in-1 are dropped, i.e. zero there.
    """
    x = np.arange(n_out) * scale + shift
    base = np.floor(x)
    t = (x - base)[:, None]
    weights = 0.5 * np.hstack([-(t**3) + 2 * t**2 - t, 3 * t**3 - 5 * t**2 + 2, -3 * t**3 + 4 * t**2 + t, t**3 - t**2])
    cols = base[:, None].astype(int) + np.arange(-1, 3)
    rows = np.repeat(np.arange(n_out)[:, None], 4, axis=1)
    keep = (cols >= 0) & (cols < n_in)
    return sparse.csr_matrix((weights[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n_out, n_in))


def _separable_resample(data: np.ndarray, scale: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample float32 `data` at index `scale * t + shift` per axis with Catmull-Rom weights."""
    out = data
    for axis in range(3):
        w = _catmull_rom_matrix(shape[axis], scale[axis], shift[axis], out.shape[axis])
        moved = np.moveaxis(out, axis, 0)
        out = np.moveaxis((w @ moved.reshape(moved.shape[0], -1)).reshape((shape[axis],) + moved.shape[1:]), 0, axis)
    return out


def upsample_labels(vol: Volume, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resample a uint8 label volume onto a finer grid with the same axes, smoothing its surfaces.

    Each label's indicator is interpolated with a separable Catmull-Rom cubic and thresholded at
    0.5; where labels meet, the largest value wins. The loop runs over the labels present, each
    on its own bounding box. Outside the source is 0.
    """
    m = _index_map(vol.affine, affine)
    if not np.allclose(m[:, :3], np.diag(np.diag(m[:, :3])), atol=1e-9):
        raise ValueError("upsample_labels: expected a target grid with the source's axis directions")
    scale, shift = np.diag(m[:, :3]), m[:, 3]
    out = np.zeros(shape, np.uint8)
    best = np.zeros(shape, np.float32)
    for label, box in enumerate(ndimage.find_objects(vol.data), start=1):
        if box is None:
            continue
        lo = np.array([max(s.start - CUBIC_PAD, 0) for s in box])
        hi = np.array([min(s.stop + CUBIC_PAD, n) for s, n in zip(box, vol.data.shape)])
        dlo = np.clip(np.floor((lo - 0.5 - shift) / scale).astype(int), 0, shape)
        dhi = np.clip(np.ceil((hi - 0.5 - shift) / scale).astype(int) + 1, 0, shape)
        if np.any(dhi <= dlo):
            continue
        crop = (vol.data[tuple(slice(a, b) for a, b in zip(lo, hi))] == label).astype(np.float32)
        value = _separable_resample(crop, scale, scale * dlo + shift - lo, tuple(dhi - dlo))
        window = tuple(slice(a, b) for a, b in zip(dlo, dhi))
        wins = (value > 0.5) & (value > best[window])
        best[window][wins] = value[wins]
        out[window][wins] = label
    return out


# ---------------------------------------------------------------------------------------------
# Labels


def _compact_ids(ids: np.ndarray, names: dict[int, str], source: str) -> tuple[np.ndarray, dict[str, int]]:
    """uint8 structure volume and name -> id map of the ids present; ids above 255 are renumbered 1..n."""
    present = np.unique(ids)
    present = present[present != 0]
    require(present.size > 0, source, "at least one labelled voxel", "all are 0")
    if present[-1] <= 255:
        return ids.astype(np.uint8), {names[int(i)]: int(i) for i in present}
    require(present.size <= 255, source, "at most 255 distinct structures", present.size)
    lut = np.zeros(int(present[-1]) + 1, np.uint8)
    lut[present] = np.arange(1, present.size + 1)
    return lut[ids], {names[int(i)]: n for n, i in enumerate(present, start=1)}


def _labels_from_multilabel(
    path: Path, class_map: dict[int, str], max_bytes: int | None
) -> tuple[Volume, dict[str, int]]:
    """One multilabel NIfTI -> (uint8 structure volume, name -> id)."""
    vol = _as_ids(read_nifti(path, "labels", max_bytes))
    present = np.unique(vol.data)
    unknown = [int(i) for i in present if i != 0 and int(i) not in class_map]
    if unknown:
        raise InputError(
            f"{vol.source}: unknown label ids {unknown[:20]}; expected ids of the class map "
            f"({min(class_map)}..{max(class_map)}); pass class_map= with the map the segmentation was made with"
        )
    data, names = _compact_ids(vol.data, class_map, vol.source)
    return Volume(data, vol.affine, vol.source), names


def _labels_from_folder(
    folder: Path, class_map: dict[int, str], ref: Volume | None, max_bytes: int | None
) -> tuple[Volume, dict[str, int]]:
    """A folder of binary `<name>.nii.gz` masks on one grid -> (uint8 structure volume, name -> id).

    Names in the class map keep its ids, other names get ids after the map's largest; empty masks
    are skipped. Where masks overlap, the later name in sorted order wins.
    """
    by_name = {name: i for i, name in class_map.items()}
    next_id = max(class_map, default=0) + 1
    ids: np.ndarray | None = None
    grid: Volume | None = ref
    names: dict[int, str] = {}
    for name, path in _nifti_files(folder, "labels"):
        mask = read_nifti(path, "labels mask", max_bytes)
        if grid is None:
            grid = mask
        _require_same_grid(mask, grid)
        inside = mask.data != 0
        if ids is None:
            ids = np.zeros(inside.shape, np.int64)
        if not inside.any():
            continue
        if name not in by_name:
            by_name[name], next_id = next_id, next_id + 1
        ids[inside] = by_name[name]
        names[by_name[name]] = name
    data, structure_names = _compact_ids(ids, names, f"labels {folder}")
    return Volume(data, grid.affine, f"labels {folder}"), structure_names


def _add_tissue_types(
    structures: Volume, names: dict[str, int], folder: Path, max_bytes: int | None
) -> tuple[Volume, dict[str, int]]:
    """Paint tissue-type masks (any grid, nearest neighbour) onto voxels without a structure.

    Each mask becomes a structure named after its file (e.g. "subcutaneous_fat") with a new id.
    """
    data = structures.data.copy()
    names = dict(names)
    for name, path in _nifti_files(folder, "tissue_types"):
        mask = read_nifti(path, "tissue_types mask", max_bytes)
        mask = Volume((mask.data != 0).astype(np.uint8), mask.affine, mask.source)
        onto = resample_nearest(mask, structures.affine, data.shape).astype(bool) & (data == 0)
        if not onto.any():
            continue
        new_id = max(names.values(), default=0) + 1
        require(new_id <= 255, f"tissue_types {path}", "at most 255 structures in total", new_id)
        data[onto] = new_id
        names[name] = new_id
    return Volume(data, structures.affine, structures.source), names


def body_from_labels(structures: np.ndarray, spacing_m: np.ndarray, close_mm: float = 10.0) -> np.ndarray:
    """Body mask (bool) for label-only input: the union of labels, closed over `close_mm`, holes filled.

    Holes are also filled slice by slice across the axial (k) planes, because a cavity reaching
    the top or bottom of the volume is not enclosed in 3-D.
    """
    radius = np.maximum(1, np.ceil(close_mm * 1e-3 / np.asarray(spacing_m)).astype(int))
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / r) ** 2 for g, r in zip(grid, radius)) <= 1.0
    padded = np.pad(structures != 0, [(r, r) for r in radius])
    closed = ndimage.binary_closing(padded, structure=ball)
    body = closed[tuple(slice(r, -r) for r in radius)]
    body = ndimage.binary_fill_holes(body)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(body, structure=in_plane)


# ---------------------------------------------------------------------------------------------
# DICOM


def _dicom_images(folder: Path) -> list[pydicom.Dataset]:
    """The image datasets in `folder` (not recursive), `filename` set; `InputError` on corrupt files.

    A file that describes an image slice (Rows or ImagePositionPatient) but carries no pixel data
    is refused, never skipped; other DICOM objects (DICOMDIR, reports) are ignored.
    """
    images, empty = [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(p)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as e:
            raise InputError(f"DICOM series {folder}: {p.name} is not a readable DICOM file ({e})") from None
        ds.filename = str(p)
        if "PixelData" in ds:
            images.append(ds)
        elif "Rows" in ds or "ImagePositionPatient" in ds:
            empty.append(p.name)
    if empty:
        raise InputError(
            f"DICOM series {folder}: expected pixel data in every image slice, found none in {_file_list(empty)}"
        )
    require(bool(images), f"DICOM series {folder}", "DICOM files with pixel data", "none")
    return images


def _file_list(names: list[str], most: int = 5) -> str:
    """'a, b, c' for up to `most` names, then how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _series_key(ds: pydicom.Dataset, folder: Path) -> tuple:
    """What one series shares: SeriesInstanceUID, FrameOfReferenceUID, Rows, Columns, orientation, pixel spacing.

    Orientation and spacing are rounded to 1e-4 so that float noise does not split a series.
    """
    try:
        iop = tuple(np.round([float(v) for v in ds.ImageOrientationPatient], 4) + 0.0)
        pixel = tuple(np.round([float(v) for v in ds.PixelSpacing], 4) + 0.0)
        size = (int(ds.Rows), int(ds.Columns))
        position = [float(v) for v in ds.ImagePositionPatient]
    except (AttributeError, TypeError, ValueError) as e:
        raise InputError(
            f"DICOM series {folder}: {Path(ds.filename).name}: expected ImageOrientationPatient, ImagePositionPatient, "
            f"PixelSpacing, Rows and Columns ({e})"
        ) from None
    counts = (len(iop), len(pixel), len(position))
    require(counts == (6, 2, 3), f"DICOM {ds.filename}", "6 orientation, 2 pixel spacing and 3 position values", counts)
    return (str(ds.get("SeriesInstanceUID", "")), str(ds.get("FrameOfReferenceUID", "")), size, iop, pixel)


def _dicom_series(folder: Path, series: str | None) -> list[pydicom.Dataset]:
    """The slices of one series in `folder`: the only one, or the one holding the file named `series`.

    Slices belong together when they share SeriesInstanceUID and geometry (see `_series_key`), so
    two series without a SeriesInstanceUID are not merged. Several series without `series` are
    refused with a list of them.
    """
    groups: dict[tuple, list[pydicom.Dataset]] = {}
    for ds in _dicom_images(folder):
        groups.setdefault(_series_key(ds, folder), []).append(ds)
    found = list(groups.values())
    if series is not None:
        chosen = [g for g in found if any(Path(ds.filename).name == series for ds in g)]
        require(
            bool(chosen),
            f"DICOM series {folder} series={series!r}",
            "the name of a DICOM image file in the folder",
            "no such file",
        )
        found = chosen
    if len(found) > 1:
        listing = "; ".join(_describe_series(g) for g in found)
        raise InputError(
            f"DICOM series {folder}: expected one series, found {len(found)}: "
            f"{listing}; pick one with series=<a file name "
            "listed> (--series on the command line, 'series' in a patient config) or a folder holding one series"
        )
    slices = found[0]
    require(len(slices) >= 2, f"DICOM series {folder}", "at least 2 slices", len(slices))
    return slices


def _describe_series(slices: list[pydicom.Dataset]) -> str:
    """'IM0000.dcm (20 files, 'abdomen', 512x512, 0.7 mm)' for a list of a folder's series."""
    first = min(Path(ds.filename).name for ds in slices)
    ds = slices[0]
    pixel = "x".join(f"{float(v):g}" for v in ds.PixelSpacing)
    return (
        f"{first} ({len(slices)} files, {str(ds.get('SeriesDescription', ''))!r}, "
        f"{int(ds.Rows)}x{int(ds.Columns)}, {pixel} mm)"
    )


def _dicom_geometry(slices: list[pydicom.Dataset], folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """Slices sorted along their normal and the (4, 4) voxel -> LPS millimetre affine.

    Voxel index (i, j, k) = (column, row, slice). The third column is the step between slice
    positions, so gantry tilt is kept. The slices share one orientation and spacing
    (`_dicom_series`); `InputError` naming the files on duplicate positions, gaps, uneven
    spacing or positions off one line.
    """
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    pixel = np.array([float(v) for v in slices[0].PixelSpacing])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    order = np.argsort(ipp @ normal, kind="stable")
    slices, ipp = [slices[i] for i in order], ipp[order]
    names = [Path(ds.filename).name for ds in slices]
    gaps = np.diff(ipp @ normal)
    if gaps.min() <= DICOM_POSITION_TOL_MM:
        k = int(np.argmin(gaps))
        raise InputError(
            f"DICOM series {folder}: expected distinct slice positions, "
            f"got duplicate ImagePositionPatient in {names[k]} and {names[k + 1]}"
        )
    typical = float(np.median(gaps))
    if gaps.max() - gaps.min() > DICOM_SPACING_RTOL * typical + DICOM_POSITION_TOL_MM:
        k = int(np.argmax(np.abs(gaps - typical)))
        raise InputError(
            f"DICOM series {folder}: expected evenly spaced slices, "
            f"got gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            f"(missing or extra slices?): {gaps[k]:.3f} mm between "
            f"{names[k]} and {names[k + 1]}, typically {typical:.3f} mm"
        )
    step = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    off_line = np.linalg.norm(ipp - (ipp[0] + np.arange(len(ipp))[:, None] * step), axis=1)
    if off_line.max() > DICOM_SPACING_RTOL * typical + DICOM_POSITION_TOL_MM:
        k = int(np.argmax(off_line))
        raise InputError(
            f"DICOM series {folder}: expected slice positions on one line, got {names[k]} {off_line[k]:.3f} mm off it "
            "(slices of another series?)"
        )
    affine = np.eye(4)
    affine[:3, 0] = row_dir * pixel[1]  # PixelSpacing is (between rows, between columns)
    affine[:3, 1] = col_dir * pixel[0]
    affine[:3, 2] = step
    affine[:3, 3] = ipp[0]
    return slices, affine


def read_dicom(series_dir: str | os.PathLike, max_bytes: int | None = None, series: str | None = None) -> Volume:
    """A DICOM CT series as a canonical `Volume` of float32 HU (RescaleSlope/Intercept applied).

    series: when the folder holds several series, the name of one of its files (see `_dicom_series`).
    A series whose Modality is set and is not CT is refused.
    """
    folder = _existing(series_dir, "DICOM series", folder=True)
    slices, affine_lps = _dicom_geometry(_dicom_series(folder, series), folder)
    modality = str(slices[0].get("Modality", "CT")) or "CT"
    require(modality == "CT", f"DICOM series {folder}", "Modality CT", repr(modality))
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    check_memory((cols, rows, len(slices)), 8, f"DICOM series {folder}", max_bytes)
    data = np.empty((cols, rows, len(slices)), np.float32)
    for k, ds in enumerate(slices):
        try:
            pixels = ds.pixel_array
        except DICOM_PIXEL_ERRORS as e:
            raise InputError(
                f"DICOM series {folder}: {Path(ds.filename).name} has unreadable pixel data ({e})"
            ) from None
        require(
            pixels.shape == (rows, cols),
            f"DICOM {ds.filename}",
            f"{rows}x{cols} pixels like the first slice",
            pixels.shape,
        )
        slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
        data[:, :, k] = (pixels.astype(np.float32) * slope + intercept).T
    return _canonical(data, LPS_TO_RAS @ affine_lps, 1e-3, f"DICOM series {folder}")


# ---------------------------------------------------------------------------------------------
# Patients


def load_nifti(
    ct: str | os.PathLike | None,
    labels: str | os.PathLike | None,
    tissue_types: str | os.PathLike | None = None,
    body: str | os.PathLike | None = None,
    class_map: str | os.PathLike | dict | None = None,
    spacing_mm: float | None = None,
    name: str | None = None,
    max_bytes: int | None = None,
) -> Patient:
    """Build a `Patient` from a CT NIfTI (HU) and/or TotalSegmentator v2 labels.

    ct: CT in Hounsfield units, or None for label-only input.
    labels: one multilabel NIfTI (ids named by `class_map`), a folder of `<name>.nii.gz` masks, or
        None for CT-only input (tissue classes from HU thresholds).
    tissue_types: folder of TotalSegmentator "tissue_types" masks (subcutaneous_fat, torso_fat,
        skeletal_muscle) on any grid; they fill voxels without a structure.
    body: body mask on any grid; default: from CT values, or for label-only input from the labels.
    class_map: label id -> name (dict, class_map.json or YAML); default TotalSegmentator v2 "total".
    spacing_mm: resample to this isotropic voxel size (CT linear, labels smoothed when upsampling).
    max_bytes: cap on the memory a load may use (see `memory_limit`).
    """
    if ct is None and labels is None:
        raise InputError("load_nifti: expected a CT, labels or both, got neither")
    _check_spacing(spacing_mm)
    ct_vol = _as_hu(read_nifti(ct, "ct", max_bytes)) if ct is not None else None
    return _build_patient(
        ct_vol, labels, tissue_types, body, class_map, spacing_mm, name or default_name(ct, labels), max_bytes
    )


def load_dicom(
    series_dir: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    tissue_types: str | os.PathLike | None = None,
    body: str | os.PathLike | None = None,
    class_map: str | os.PathLike | dict | None = None,
    spacing_mm: float | None = None,
    name: str | None = None,
    max_bytes: int | None = None,
    series: str | None = None,
) -> Patient:
    """Build a `Patient` from a DICOM CT series folder plus optional NIfTI labels on its grid.

    Arguments as in `load_nifti`; the series is sorted by ImagePositionPatient and its LPS
    geometry converted to the RAS patient frame. series: the name of one file of the series to
    read when the folder holds several.
    """
    _check_spacing(spacing_mm)
    ct_vol = _as_hu(read_dicom(series_dir, max_bytes, series))
    return _build_patient(
        ct_vol, labels, tissue_types, body, class_map, spacing_mm, name or default_name(series_dir), max_bytes
    )


def _check_spacing(spacing_mm: float | None) -> None:
    """`InputError` unless `spacing_mm` is None or a finite positive number."""
    if spacing_mm is None:
        return
    try:
        ok = bool(np.isfinite(float(spacing_mm)) and float(spacing_mm) > 0)
    except (TypeError, ValueError):
        ok = False
    require(ok, "spacing_mm", "a positive voxel size in millimetres", repr(spacing_mm))


def _build_patient(
    ct: Volume | None,
    labels: str | os.PathLike | None,
    tissue_types: str | os.PathLike | None,
    body: str | os.PathLike | None,
    class_map: str | os.PathLike | dict | None,
    spacing_mm: float | None,
    name: str | None,
    max_bytes: int | None,
) -> Patient:
    """Assemble structures, body and tissue on the CT (or label) grid, resampled if asked.

    Every mask is first brought onto the reference grid, then everything is resampled together
    onto the isotropic grid, so all volumes of the patient share one grid.
    """
    structures, names = _read_structures(labels, class_map, ct, max_bytes)
    if tissue_types is not None:
        structures, names = _add_tissue_types(
            structures, names, _existing(tissue_types, "tissue_types", folder=True), max_bytes
        )
    body_vol = _read_body(body, structures, max_bytes) if body is not None else None
    if spacing_mm is None:
        check_memory(structures.data.shape, BYTES_PER_VOXEL, structures.source, max_bytes)
        check_derivable(structures.data.shape, structures.source)
    else:
        ct, structures, body_vol = _resample_all(ct, structures, body_vol, spacing_mm * 1e-3, max_bytes)
        check_derivable(structures.data.shape, f"{structures.source} at spacing_mm={spacing_mm:g}")

    if body_vol is not None:
        body_mask = body_vol.data.astype(bool)
    elif ct is not None:
        # Labelled voxels are inside the body even below body_min_hu (lungs, bowel gas at the border).
        body_mask = TissueMap.load().body_mask_from_ct(ct.data, structures.spacing) | (structures.data != 0)
    else:
        body_mask = body_from_labels(structures.data, structures.spacing)
    ct_data = None if ct is None else ct.data
    tissue = TissueMap.load().tissue_volume(structures.data, names, body_mask, structures.spacing, ct_data)
    return Patient(
        name=name or "patient",
        tissue=tissue,
        structures=structures.data,
        structure_names=names,
        affine=structures.affine,
        ct=ct_data,
    )


def _read_structures(
    labels: str | os.PathLike | None,
    class_map: str | os.PathLike | dict | None,
    ct: Volume | None,
    max_bytes: int | None,
) -> tuple[Volume, dict[str, int]]:
    """Structure volume (uint8) and names on the CT grid; empty for CT-only input."""
    if labels is None:
        return Volume(np.zeros(ct.data.shape, np.uint8), ct.affine, ct.source), {}
    ids = load_class_map(class_map)
    path = Path(labels).expanduser()
    if path.is_dir():
        structures, names = _labels_from_folder(path, ids, ct, max_bytes)
    else:
        structures, names = _labels_from_multilabel(_existing(path, "labels"), ids, max_bytes)
    if ct is not None:
        _require_same_grid(structures, ct)
    return structures, names


def _read_body(body: str | os.PathLike, ref: Volume, max_bytes: int | None) -> Volume:
    """A body mask file (any grid) as a 0/1 uint8 volume on the grid of `ref` (nearest neighbour)."""
    mask = read_nifti(body, "body", max_bytes)
    mask = Volume((mask.data != 0).astype(np.uint8), mask.affine, mask.source)
    return Volume(resample_nearest(mask, ref.affine, ref.data.shape), ref.affine, mask.source)


def _resample_all(
    ct: Volume | None, structures: Volume, body: Volume | None, spacing_m: float, max_bytes: int | None
) -> tuple[Volume | None, Volume, Volume | None]:
    """CT (linear), structures and body (smoothed when upsampling, else nearest) on an isotropic grid."""
    shape, affine = isotropic_grid(structures.data.shape, structures.affine, spacing_m)
    check_memory(shape, BYTES_PER_VOXEL, f"spacing_mm={spacing_m * 1e3:g}", max_bytes)
    upsampling = bool(np.any(structures.spacing > spacing_m * (1 + 1e-6)))
    labels = upsample_labels if upsampling else resample_nearest

    def onto_grid(vol: Volume | None, resample) -> Volume | None:
        return None if vol is None else Volume(resample(vol, affine, shape), affine, vol.source)

    return onto_grid(ct, resample_linear), onto_grid(structures, labels), onto_grid(body, labels)
