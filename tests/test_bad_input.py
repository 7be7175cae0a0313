"""Bad input gets an `InputError` naming the file or argument and what was expected."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from niftis import crop_pair, save_nifti

from sim.anatomy.loaders import load_class_map, load_dicom, load_nifti
from sim.errors import InputError


@pytest.fixture
def small_pair(real_ct: Path, real_seg: Path, tmp_path: Path) -> tuple[Path, Path, nib.Nifti1Image, nib.Nifti1Image]:
    """A 40 x 40 x 20 crop of the real CT and labels (fast to load), plus their images."""
    ct, seg = crop_pair(real_ct, real_seg, (slice(40, 80), slice(20, 60), slice(60, 80)), tmp_path)
    return ct, seg, nib.load(ct), nib.load(seg)


def test_the_small_pair_itself_loads(small_pair) -> None:
    ct, seg, *_ = small_pair
    assert load_nifti(ct, seg).shape == (40, 40, 20)


def test_missing_files(small_pair, tmp_path: Path) -> None:
    ct, seg, *_ = small_pair
    with pytest.raises(InputError, match=r"ct .*nope\.nii\.gz: file or folder not found"):
        load_nifti(tmp_path / "nope.nii.gz", seg)
    with pytest.raises(InputError, match=r"labels .*nope\.nii\.gz: file or folder not found"):
        load_nifti(ct, tmp_path / "nope.nii.gz")
    with pytest.raises(InputError, match=r"tissue_types .*nope: file or folder not found"):
        load_nifti(ct, seg, tissue_types=tmp_path / "nope")
    with pytest.raises(InputError, match="expected a CT, labels or both"):
        load_nifti(None, None)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty"])
def test_corrupt_nifti(small_pair, tmp_path: Path, damage: str) -> None:
    ct, seg, *_ = small_pair
    raw = ct.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "random_bytes": os.urandom(4000), "empty": b""}[damage])
    with pytest.raises(InputError, match=r"ct .*bad\.nii\.gz"):
        load_nifti(bad, seg)
    with pytest.raises(InputError, match=r"labels .*bad\.nii\.gz"):
        load_nifti(ct, bad)


def test_label_grid_differs_from_ct(small_pair, tmp_path: Path) -> None:
    ct, seg, _, seg_img = small_pair
    data = np.asanyarray(seg_img.dataobj)
    cropped = save_nifti(data[:, :, :-1], seg_img.affine, tmp_path / "short.nii.gz")
    with pytest.raises(
        InputError, match=r"short\.nii\.gz: expected the grid of ct .*shape \(40, 40, 20\).*got shape \(40, 40, 19\)"
    ):
        load_nifti(ct, cropped)
    moved = seg_img.affine.copy()
    moved[0, 3] += 1.5  # mm
    shifted = save_nifti(data, moved, tmp_path / "shifted.nii.gz")
    with pytest.raises(InputError, match=r"shifted\.nii\.gz: expected the grid of ct .*origin"):
        load_nifti(ct, shifted)


def test_mask_folder_grids_must_agree(small_pair, tmp_path: Path) -> None:
    _, _, _, seg_img = small_pair
    folder = tmp_path / "masks"
    folder.mkdir()
    data = np.asanyarray(seg_img.dataobj)
    save_nifti((data == 28).astype(np.uint8), seg_img.affine, folder / "vertebrae_L4.nii.gz")
    save_nifti((data[:-2] == 29).astype(np.uint8), seg_img.affine, folder / "vertebrae_L3.nii.gz")
    with pytest.raises(InputError, match=r"vertebrae_L4\.nii\.gz: expected the grid of labels mask .*vertebrae_L3"):
        load_nifti(None, folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="a folder of <name>.nii.gz masks"):
        load_nifti(None, empty)


def test_non_finite_hu(small_pair, tmp_path: Path) -> None:
    _, seg, ct_img, _ = small_pair
    hu = np.asanyarray(ct_img.dataobj).astype(np.float32)
    hu[3, 4, 5] = np.nan
    hu[6, 7, 8] = np.inf
    bad = save_nifti(hu, ct_img.affine, tmp_path / "nan_ct.nii.gz")
    with pytest.raises(
        InputError, match=r"nan_ct\.nii\.gz: expected finite Hounsfield units, found 2 NaN or infinite voxels"
    ):
        load_nifti(bad, seg)


def test_unknown_label_ids(small_pair, tmp_path: Path) -> None:
    ct, _, _, seg_img = small_pair
    data = np.asanyarray(seg_img.dataobj).copy()
    data[0, 0, 0] = 200
    bad = save_nifti(data, seg_img.affine, tmp_path / "odd_ids.nii.gz")
    with pytest.raises(InputError, match=r"odd_ids\.nii\.gz: unknown label ids \[200\]"):
        load_nifti(ct, bad)
    # The same ids are fine with a class map that names them.
    names = {int(i): f"structure_{i}" for i in np.unique(data) if i}
    assert load_nifti(ct, bad, class_map=names).structure_names["structure_200"] == 200


def test_non_integer_labels(small_pair, tmp_path: Path) -> None:
    ct, _, _, seg_img = small_pair
    data = np.asanyarray(seg_img.dataobj).astype(np.float32)
    data[1, 1, 1] = 2.5
    bad = save_nifti(data, seg_img.affine, tmp_path / "float_ids.nii.gz")
    with pytest.raises(InputError, match=r"float_ids\.nii\.gz: expected integer label ids"):
        load_nifti(ct, bad)


def test_bad_class_map(tmp_path: Path) -> None:
    broken = tmp_path / "class_map.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match=r"class_map .*class_map\.json: expected JSON or YAML"):
        load_class_map(broken)
    with pytest.raises(InputError, match="class_map: expected integer label ids as keys"):
        load_class_map({"spleen": 1})


def test_label_ids_above_255_are_renumbered(small_pair, tmp_path: Path) -> None:
    ct, _, _, seg_img = small_pair
    wide = np.asanyarray(seg_img.dataobj).astype(np.int16) * 3  # ids up to 351
    path = save_nifti(wide, seg_img.affine, tmp_path / "wide.nii.gz")
    names = {int(i): f"s{i}" for i in np.unique(wide) if i}
    p = load_nifti(ct, path, class_map=names)
    assert p.structures.dtype == np.uint8 and max(p.structure_names.values()) == len(names)
    for name, sid in p.structure_names.items():
        np.testing.assert_array_equal(p.structures == sid, wide == int(name[1:]))


@pytest.mark.parametrize("spacing", [0, -1.0, float("nan"), "fine"])
def test_bad_spacing(small_pair, spacing) -> None:
    ct, seg, *_ = small_pair
    with pytest.raises(InputError, match="spacing_mm: expected a positive voxel size"):
        load_nifti(ct, seg, spacing_mm=spacing)


def test_volume_too_large_for_memory(small_pair) -> None:
    ct, seg, *_ = small_pair
    with pytest.raises(InputError, match=r"^ct .*ct\.nii\.gz: a \(40, 40, 20\) grid needs .* more than the limit"):
        load_nifti(ct, seg, max_bytes=10_000)
    # Upsampling 3 mm to 0.01 mm would need terabytes: refused before anything is allocated.
    with pytest.raises(InputError, match=r"^spacing_mm=0\.01: a \(12000, 12000, 6000\) grid needs about [\d.]+ GiB"):
        load_nifti(ct, seg, spacing_mm=0.01)


def test_volume_limit_from_environment(small_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    ct, seg, *_ = small_pair
    monkeypatch.setenv("SONOLAB_MAX_VOLUME_BYTES", "1000")
    with pytest.raises(InputError, match="more than the limit"):
        load_nifti(ct, seg)


# ---------------------------------------------------------------------------------------------
# DICOM


@pytest.fixture
def dicom_copy(real_dicom, tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(real_dicom[0], folder)
    return folder


def test_corrupt_dicom_file(dicom_copy: Path) -> None:
    (dicom_copy / "IM0003.dcm").write_bytes(os.urandom(3000))
    with pytest.raises(InputError, match=r"DICOM series .*series: IM0003\.dcm is not a readable DICOM file"):
        load_dicom(dicom_copy)


def test_truncated_dicom_pixels(dicom_copy: Path) -> None:
    path = dicom_copy / "IM0002.dcm"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 5000])
    with pytest.raises(InputError, match=r"DICOM series .*IM0002\.dcm"):
        load_dicom(dicom_copy)


def test_empty_dicom_series(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"DICOM series .*empty: expected DICOM files with pixel data"):
        load_dicom(tmp_path / "empty")
    with pytest.raises(InputError, match=r"DICOM series .*absent: file or folder not found"):
        load_dicom(tmp_path / "absent")


def test_dicom_missing_slice_gives_uneven_spacing(dicom_copy: Path) -> None:
    (dicom_copy / "IM0004.dcm").unlink()
    with pytest.raises(InputError, match=r"expected evenly spaced slices, got gaps from 3\.000 to 6\.000 mm"):
        load_dicom(dicom_copy)


def test_dicom_labels_on_another_grid(real_dicom, small_pair) -> None:
    _, seg, *_ = small_pair
    with pytest.raises(InputError, match=r"seg\.nii\.gz: expected the grid of DICOM series"):
        load_dicom(real_dicom[0], labels=seg)
