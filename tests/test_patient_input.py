"""Wrong patient data is refused, never used: HU plausibility, DICOM series, the cache, degenerate volumes."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import write_dicom_series
from niftis import crop_pair, save_nifti

from sim.anatomy.derive import derive
from sim.anatomy.loaders import load_dicom, load_nifti
from sim.anatomy.patient import Patient
from sim.anatomy.phantom import make_phantom
from sim.anatomy.prepare import prepare
from sim.errors import InputError

NOT_HU = r"expected CT in Hounsfield units \(air near -1000 HU, soft tissue -200\.\.200 HU\), found values"


@pytest.fixture(scope="module")
def real(real_ct: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real CT's HU (I, J, K) and affine (mm)."""
    img = nib.load(real_ct)
    return np.asanyarray(img.dataobj).astype(np.float32), img.affine


# ---------------------------------------------------------------------------------------------
# Hounsfield units


def test_real_ct_and_its_padded_copy_are_accepted(real, tmp_path: Path) -> None:
    hu, affine = real
    padded = hu.copy()
    padded[:20, :20] = -3024.0  # the scanner's out-of-field fill
    for data in (hu, padded):
        assert load_nifti(save_nifti(data, affine, tmp_path / "ct.nii.gz"), None).ct.min() == data.min()


@pytest.mark.parametrize(
    ("remap", "found"),
    [
        # A monotone remap keeps the anatomy but not the units: what an MR looks like (0..2000).
        (
            lambda hu: 2000.0 * np.sqrt((hu - hu.min()) / (hu.max() - hu.min())),
            r"0\.\.2000 with 1st percentile \d+\.?\d* \(no fat, lung or air below -50 HU\)",
        ),
        (lambda hu: np.round(255.0 * (hu - hu.min()) / (hu.max() - hu.min())), r"0\.\.255 "),  # a uint8 picture
        (lambda hu: hu + 1024.0, r"-183\.\.4406 with 1st percentile 12 "),  # stored values, intercept not applied
        (lambda hu: hu / 2.0, r"air or lung at -5\d\d\.?\d* HU \(expected -1100\.\.-850\)"),  # a wrong slope
    ],
)
def test_values_that_are_not_hounsfield_units_are_refused(real, tmp_path: Path, remap, found: str) -> None:
    hu, affine = real
    path = save_nifti(remap(hu).astype(np.float32), affine, tmp_path / "mr.nii.gz")
    with pytest.raises(
        InputError, match=rf"^ct .*mr\.nii\.gz: {NOT_HU} .*{found}.*is this an MR or a rescaled image\?"
    ):
        load_nifti(path, None)


def test_dicom_mr_or_unrescaled_series_is_refused(real_dicom, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    shutil.copytree(real_dicom[0], folder)
    files = sorted(folder.iterdir())
    for path in files:
        ds = pydicom.dcmread(path)
        ds.RescaleIntercept = 0.0  # stored values 0..4095 read as HU
        ds.save_as(path)
    with pytest.raises(InputError, match=rf"DICOM series .*series: {NOT_HU} -?\d+\.\.\d+ with 1st percentile \d+ "):
        load_dicom(folder)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    with pytest.raises(InputError, match=r"DICOM series .*series: expected Modality CT, got 'MR'"):
        load_dicom(folder)


# ---------------------------------------------------------------------------------------------
# DICOM series


@pytest.fixture
def series(real_dicom, tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(real_dicom[0], folder)
    return folder


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        if value is None:
            delattr(ds, tag)
        else:
            setattr(ds, tag, value)
    ds.save_as(path)


@pytest.mark.parametrize("name", ["IM0000.dcm", "IM0004.dcm"])
def test_slice_without_pixel_data_is_refused_not_skipped(series: Path, name: str) -> None:
    _edit(series / name, PixelData=None)
    with pytest.raises(InputError, match=rf"expected pixel data in every image slice, found none in {name}"):
        load_dicom(series)


def test_non_image_dicom_files_are_ignored(series: Path, real_dicom) -> None:
    shutil.copy(series / "IM0000.dcm", series / "REPORT")
    _edit(series / "REPORT", PixelData=None, Rows=None, Columns=None, ImagePositionPatient=None)
    np.testing.assert_array_equal(load_dicom(series).ct, real_dicom[1])


def _two_series(real, folder: Path, second_affine: np.ndarray) -> None:
    """Two 6-slice series of the real CT in one folder, both with an empty SeriesInstanceUID."""
    hu, affine = real
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    for prefix, a in (("A", lps), ("B", second_affine)):
        part = folder.parent / prefix
        for path in write_dicom_series(part, hu[:, :, 50:56], a):
            _edit(path, SeriesInstanceUID="", SeriesDescription=f"series {prefix}")
            shutil.move(path, folder / f"{prefix}{path.name}")
    assert len(list(folder.iterdir())) == 12


@pytest.mark.parametrize("change", ["spacing", "orientation"])
def test_series_without_uid_are_separated_by_geometry(real, tmp_path: Path, change: str) -> None:
    hu, affine = real
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    other = lps.copy()
    if change == "spacing":
        other[:3, :2] *= 0.5
    elif change == "orientation":
        other[:3, :3] = other[:3, :3] @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    folder = tmp_path / "mixed"
    folder.mkdir()
    _two_series(real, folder, other)
    with pytest.raises(
        InputError,
        match=(
            r"mixed: expected one series, found 2: AIM0000\.dcm \(6 files, 'series A', "
            r".*BIM0000\.dcm \(6 files, 'series B'.*series="
        ),
    ):
        load_dicom(folder)
    picked = load_dicom(folder, series="BIM0003.dcm")
    assert picked.shape[2] == 6 and picked.name == "mixed"
    with pytest.raises(InputError, match=r"series='nope\.dcm': expected the name of a DICOM image file in the folder"):
        load_dicom(folder, series="nope.dcm")


def test_same_geometry_series_beside_each_other_are_refused(real, tmp_path: Path) -> None:
    other = np.diag([-1.0, -1.0, 1.0, 1.0]) @ real[1]
    other[:3, 3] += [40.0, 0.0, 1.5]  # interleaved positions, evenly spaced along the normal, 40 mm sideways
    folder = tmp_path / "mixed"
    folder.mkdir()
    _two_series(real, folder, other)
    with pytest.raises(
        InputError, match=r"mixed: expected slice positions on one line, got [AB]IM\d+\.dcm \d+\.\d+ mm off it"
    ):
        load_dicom(folder)


def test_positions_off_one_line_are_refused(series: Path) -> None:
    ds = pydicom.dcmread(series / "IM0003.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    _edit(series / "IM0003.dcm", ImagePositionPatient=[x + 5.0, y, z])
    with pytest.raises(InputError, match=r"expected slice positions on one line, got IM0003\.dcm 5\.000 mm off it"):
        load_dicom(series)


def test_duplicate_and_missing_slices_name_their_files(series: Path) -> None:
    shutil.copy(series / "IM0004.dcm", series / "IM0004_copy.dcm")
    with pytest.raises(
        InputError, match=r"duplicate ImagePositionPatient in IM0004(_copy)?\.dcm and IM0004(_copy)?\.dcm"
    ):
        load_dicom(series)
    (series / "IM0004_copy.dcm").unlink()
    (series / "IM0004.dcm").unlink()
    with pytest.raises(InputError, match=r"6\.000 mm between IM0005\.dcm and IM0003\.dcm, typically 3\.000 mm"):
        load_dicom(series)


def test_prepare_patient_script_picks_a_series(real, tmp_path: Path, repo_root: Path) -> None:
    hu, affine = real
    folder = tmp_path / "mixed"
    folder.mkdir()
    other = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    other[:3, :2] *= 0.5
    _two_series(real, folder, other)
    cmd = [
        sys.executable,
        str(repo_root / "scripts" / "prepare_patient.py"),
        str(folder),
        "--quiet",
        "--no-meshes",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: DICOM series") and "found 2" in bad.stderr
    good = subprocess.run([*cmd, "--series", "AIM0002.dcm"], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert "(122, 101, 6) voxels" in good.stdout


# ---------------------------------------------------------------------------------------------
# Cache


@pytest.fixture
def pair(real_ct: Path, real_seg: Path, tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir()
    return crop_pair(real_ct, real_seg, (slice(20, 100), slice(10, 90), slice(20, 100)), tmp_path / "a")


def test_identical_content_keeps_its_own_name(pair, tmp_path: Path) -> None:
    ct, seg = pair
    copies = tmp_path / "b"
    copies.mkdir()
    shutil.copy(ct, copies / "jane.nii.gz")
    shutil.copy(seg, copies / "jane_seg.nii.gz")
    first = prepare(
        {"source": "nifti", "ct": str(ct), "labels": str(seg), "meshes": False},
        cache_dir=tmp_path / "c",
        progress=False,
    )
    second = prepare(
        {
            "source": "nifti",
            "ct": str(copies / "jane.nii.gz"),
            "labels": str(copies / "jane_seg.nii.gz"),
            "meshes": False,
        },
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert second.from_cache and second.path == first.path
    assert (first.patient.name, second.patient.name) == ("ct", "jane")
    named = prepare(
        {"source": "nifti", "ct": str(ct), "labels": str(seg), "meshes": False},
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert named.from_cache and named.patient.name == "ct"


@pytest.mark.parametrize("lost", ["meta.json", "volumes.npz", "skin.npz", "landmarks.json"])
def test_entry_missing_a_file_is_rebuilt_with_a_message(pair, tmp_path: Path, lost: str) -> None:
    ct, seg = pair
    cfg = {"source": "nifti", "ct": str(ct), "labels": str(seg), "meshes": False}
    first = prepare(cfg, cache_dir=tmp_path / "c", progress=False)
    assert first.patient.landmarks and first.patient.skin is not None
    (first.path / lost).unlink()
    with pytest.warns(UserWarning, match=r"patient cache entry .* is incomplete or unreadable .*rebuilding it"):
        again = prepare(cfg, cache_dir=tmp_path / "c", progress=False)
    assert not again.from_cache and again.path == first.path
    assert again.patient.landmarks.keys() == first.patient.landmarks.keys() and again.patient.skin is not None
    assert prepare(cfg, cache_dir=tmp_path / "c", progress=False).from_cache


# ---------------------------------------------------------------------------------------------
# Degenerate volumes


def test_empty_label_map_is_refused(real, tmp_path: Path) -> None:
    hu, affine = real
    ct = save_nifti(hu, affine, tmp_path / "ct.nii.gz")
    zeros = save_nifti(np.zeros(hu.shape, np.uint8), affine, tmp_path / "zeros.nii.gz")
    for args in ((ct, zeros), (None, zeros)):
        with pytest.raises(
            InputError, match=r"^labels .*zeros\.nii\.gz: expected at least one labelled voxel, got all are 0"
        ):
            load_nifti(*args)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2), (60, 60, 1), (3, 60, 60)])
def test_too_few_voxels_are_refused(real_ct: Path, real_seg: Path, tmp_path: Path, shape: tuple[int, int, int]) -> None:
    ct, seg = crop_pair(real_ct, real_seg, tuple(slice(30, 30 + n) for n in shape), tmp_path)
    expected = "expected at least 4 voxels along each axis for surface and landmark derivation, got shape " + re.escape(
        str(shape)
    )
    for args, who in (((ct, None), r"^ct .*ct\.nii\.gz"), ((None, seg), r"^labels .*seg\.nii\.gz")):
        if args[1] is not None and not np.asanyarray(nib.load(seg).dataobj).any():
            continue  # an all-background crop is refused for that first (tested above)
        with pytest.raises(InputError, match=rf"{who}: {expected}"):
            load_nifti(*args)


def test_coarse_spacing_is_refused(real_ct: Path, real_seg: Path) -> None:
    with pytest.raises(
        InputError,
        match=r"seg_fast_force_split\.nii\.gz at spacing_mm=100: expected at least 4 voxels .*got shape \(4, 3, 3\)",
    ):
        load_nifti(real_ct, real_seg, spacing_mm=100)
    with pytest.raises(InputError, match=r"^spacing_mm: expected a positive finite voxel size of at most 4 mm, got 20"):
        make_phantom(0, 20.0)
    with pytest.raises(InputError, match=r"^spacing_mm: expected .*at most 4 mm, got 8"):
        prepare({"source": "phantom", "spacing_mm": 8}, cache_dir="/nonexistent/never/written", progress=False)


def test_derive_refuses_a_tiny_patient_and_skips_unmeshable_bones() -> None:
    tiny = Patient(
        "tiny", np.ones((2, 5, 5), np.uint8), np.zeros((2, 5, 5), np.uint8), {}, np.diag([0.003] * 3 + [1.0])
    )
    with pytest.raises(InputError, match=r"^patient 'tiny': expected at least 4 voxels .*got shape \(2, 5, 5\)"):
        derive(tiny)
    structures = np.zeros((20, 20, 20), np.uint8)
    structures[10, 10, 10] = 1  # a one-voxel fragment of a vertebra at the edge of a field of view
    one = Patient(
        "one", np.full((20, 20, 20), 3, np.uint8), structures, {"vertebrae_L3": 1}, np.diag([0.003] * 3 + [1.0])
    )
    with pytest.warns(UserWarning) as caught:
        derived = derive(one)
    assert sorted(str(w.message) for w in caught) == [
        "one vertebrae_L3: 1 voxels are too few or too thin for a mesh; skipped",
        "one vertebrae_L3: 1 voxels, fewer than the 100 landmarks need; skipped",
    ]
    assert derived.landmarks == {}
    assert "vertebrae_L3" not in derived.meshes and "body" in derived.meshes


def _nifti_with_header_edit(data: np.ndarray, path: Path, offset: int, value: float) -> Path:
    """An uncompressed NIfTI of `data` without sform or qform whose header float at `offset` is `value`."""
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms((3.0, 3.0, 3.0))
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("value", [0.0, -3.0, float("nan"), float("inf")])
def test_bad_header_voxel_size_is_refused(real, tmp_path: Path, value: float) -> None:
    path = _nifti_with_header_edit(real[0], tmp_path / "ct.nii", 80, value)  # pixdim[1]
    with pytest.raises(InputError, match=r"ct .*ct\.nii: expected positive voxel sizes in the header's pixdim, got \["):
        load_nifti(path, None)


def test_singular_or_non_finite_affine_is_refused(real, tmp_path: Path) -> None:
    hu, affine = real
    for name, column in (("singular", affine[:3, 1]), ("nan", [np.nan, 0.0, 0.0])):
        bad = affine.copy()
        bad[:3, 0] = column
        header = nib.Nifti1Header()
        header.set_sform(bad, code=1)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(hu, None, header), path)
        with pytest.raises(InputError, match=rf"ct .*{name}\.nii\.gz: expected an invertible voxel-to-world affine"):
            load_nifti(path, None)
