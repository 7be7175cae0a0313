"""Loading real CT and TotalSegmentator labels: geometry, tissue classes, every input form."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from niftis import crop_pair, save_nifti
from skimage import measure

from sim.anatomy.loaders import Volume, load_dicom, load_nifti, resample_nearest, upsample_labels
from sim.anatomy.patient import Patient
from sim.anatomy.tissues import TISSUE_ID

LUMBAR = [f"vertebrae_L{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def patient(real_ct: Path, real_seg: Path, totalseg_dir: Path) -> Patient:
    return load_nifti(real_ct, real_seg, tissue_types=totalseg_dir / "tissue_types")


def test_real_ct_grid_is_ras_in_metres(patient: Patient, real_ct: Path) -> None:
    src = nib.load(real_ct)
    assert patient.shape == (122, 101, 112)
    assert patient.ct.dtype == np.float32 and patient.ct.shape == patient.shape
    np.testing.assert_allclose(patient.spacing, 0.003, rtol=1e-6)
    assert nib.aff2axcodes(patient.affine) == ("R", "A", "S")
    assert np.all(np.diag(patient.affine)[:3] > 0)
    np.testing.assert_allclose(patient.affine[:3, 3], src.affine[:3, 3] * 1e-3, atol=1e-9)
    np.testing.assert_array_equal(patient.ct, np.asanyarray(src.dataobj).astype(np.float32))
    assert set(LUMBAR) <= set(patient.structure_names)


def test_real_tissue_classes_are_sensible(patient: Patient) -> None:
    vertebrae = np.isin(
        patient.structures, [i for n, i in patient.structure_names.items() if n.startswith("vertebrae_")]
    )
    assert vertebrae.sum() > 1000
    assert np.all(patient.tissue[vertebrae] == TISSUE_ID["bone"])
    # Unlabelled soft voxels inside the body (not the skin shell) in the fat HU window are fat.
    unlabelled = (
        (patient.structures == 0) & (patient.tissue != TISSUE_ID["air"]) & (patient.tissue != TISSUE_ID["skin"])
    )
    fat_hu = unlabelled & (patient.ct > -190) & (patient.ct < -30)
    assert fat_hu.sum() > 1000 and np.all(patient.tissue[fat_hu] == TISSUE_ID["fat"])
    # Air outside the body: the volume's corners and everything below -900 HU that is unlabelled.
    corners = patient.tissue[[0, -1]][:, [0, -1]][:, :, [0, -1]]
    assert np.all(corners == TISSUE_ID["air"])
    assert np.mean(patient.tissue[(patient.ct < -900) & (patient.structures == 0)] == TISSUE_ID["air"]) > 0.999
    assert (patient.tissue == TISSUE_ID["skin"]).sum() > 1000


def test_tissue_types_on_their_shorter_grid_land_on_the_ct_grid(
    patient: Patient, real_seg: Path, totalseg_dir: Path
) -> None:
    seg = np.asanyarray(nib.load(real_seg).dataobj)
    for name in ("subcutaneous_fat", "torso_fat", "skeletal_muscle"):
        img = nib.load(totalseg_dir / "tissue_types" / f"{name}.nii.gz")
        assert img.shape[2] == 30  # the shorter grid; its affine puts slice k at CT slice k
        expected = np.zeros(patient.shape, bool)
        expected[:, :, :30] = (np.asanyarray(img.dataobj) != 0) & (seg[:, :, :30] == 0)
        np.testing.assert_array_equal(patient.structures == patient.structure_names[name], expected)
    assert np.all(
        patient.tissue[patient.structures == patient.structure_names["subcutaneous_fat"]] != TISSUE_ID["muscle"]
    )


def test_tissue_types_with_their_own_cropped_flipped_grid(
    real_ct: Path, real_seg: Path, totalseg_dir: Path, tmp_path: Path
) -> None:
    src = nib.load(totalseg_dir / "tissue_types" / "torso_fat.nii.gz")
    mask = np.asanyarray(src.dataobj)
    # Keep slices 10..29 and i 20..99, flip i: a different shape, origin and orientation.
    crop = mask[20:100, :, 10:30][::-1]
    affine = src.affine @ np.array([[-1, 0, 0, 99], [0, 1, 0, 0], [0, 0, 1, 10], [0, 0, 0, 1]], float)
    folder = tmp_path / "tissue_types"
    folder.mkdir()
    save_nifti(crop, affine, folder / "torso_fat.nii.gz")
    p = load_nifti(real_ct, real_seg, tissue_types=folder)
    seg = np.asanyarray(nib.load(real_seg).dataobj)
    expected = np.zeros(p.shape, bool)
    expected[20:100, :, 10:30] = (mask[20:100, :, 10:30] != 0) & (seg[20:100, :, 10:30] == 0)
    np.testing.assert_array_equal(p.structures == p.structure_names["torso_fat"], expected)


def test_folder_of_masks_matches_the_multilabel_file(
    patient: Patient, real_ct: Path, real_seg: Path, tmp_path: Path
) -> None:
    img = nib.load(real_seg)
    seg = np.asanyarray(img.dataobj)
    names = ["vertebrae_L3", "vertebrae_L4", "liver", "kidney_left", "spinal_cord"]
    for name in names:
        save_nifti((seg == patient.structure_names[name]).astype(np.uint8), img.affine, tmp_path / f"{name}.nii.gz")
    save_nifti(np.zeros(seg.shape, np.uint8), img.affine, tmp_path / "spleen.nii.gz")  # empty masks are skipped
    # A name TotalSegmentator does not know, inside the liver: later names win where masks overlap.
    centre = np.round(np.argwhere(seg == patient.structure_names["liver"]).mean(axis=0)).astype(int)
    box = tuple(slice(c - 2, c + 2) for c in centre)
    tumour = np.zeros(seg.shape, np.uint8)
    tumour[box] = 1
    save_nifti(tumour, img.affine, tmp_path / "my_tumour.nii.gz")

    p = load_nifti(real_ct, tmp_path)
    assert set(p.structure_names) == set(names) | {"my_tumour"}
    for name in names:  # known names keep their TotalSegmentator ids
        assert p.structure_names[name] == patient.structure_names[name]
        expected = (patient.structures == patient.structure_names[name]) & (name != "liver" or tumour == 0)
        np.testing.assert_array_equal(p.structures == p.structure_names[name], expected)
    assert p.structure_names["my_tumour"] > 117
    assert np.all(p.structures[box] == p.structure_names["my_tumour"])
    assert np.all(p.tissue[box] == TISSUE_ID["soft_tissue"])


def test_reoriented_copy_loads_to_the_same_ras_volume(
    patient: Patient, real_ct: Path, real_seg: Path, tmp_path: Path
) -> None:
    ct_img, seg_img = nib.load(real_ct), nib.load(real_seg)
    # New voxel axes (a, b, c) = (k, I-1-i, j): permuted and flipped, same physical positions.
    n_i = ct_img.shape[0]
    to_old = np.array([[0, -1, 0, n_i - 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    affine = ct_img.affine @ to_old

    def reorient(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(a[::-1], (2, 0, 1)))

    ct = save_nifti(reorient(np.asanyarray(ct_img.dataobj)), affine, tmp_path / "ct.nii.gz")
    seg = save_nifti(reorient(np.asanyarray(seg_img.dataobj)), affine, tmp_path / "seg.nii.gz")
    assert nib.aff2axcodes(affine) == ("S", "L", "A")
    p = load_nifti(ct, seg)
    np.testing.assert_allclose(p.affine, patient.affine, atol=1e-9)
    np.testing.assert_array_equal(p.ct, patient.ct)
    np.testing.assert_array_equal(p.structures[patient.structures < 118], patient.structures[patient.structures < 118])


def test_landmarks_of_l1_to_l5_lie_in_their_vertebrae(patient: Patient) -> None:
    from sim.anatomy.derive import derive

    derived = derive(patient, meshes=False)
    assert set(LUMBAR) <= set(derived.landmarks)
    to_voxel = derived.world_to_voxel()
    for name in LUMBAR:
        ijk = np.round(to_voxel @ np.append(derived.landmarks[name].centre, 1.0))[:3].astype(int)
        assert derived.structures[tuple(ijk)] == derived.structure_names[name], name


def test_dicom_series_round_trip(real_dicom: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, hu, affine = real_dicom
    p = load_dicom(folder)
    assert p.shape == hu.shape and p.name == folder.name
    np.testing.assert_array_equal(p.ct, hu)
    np.testing.assert_allclose(p.affine, affine, atol=1e-9)
    assert nib.aff2axcodes(p.affine) == ("R", "A", "S")


def test_dicom_with_nifti_labels_on_its_grid(
    real_dicom: tuple[Path, np.ndarray, np.ndarray], real_seg: Path, tmp_path: Path
) -> None:
    folder, hu, affine = real_dicom
    seg = np.asanyarray(nib.load(real_seg).dataobj)[:, :, 50:58]
    mm = affine.copy()
    mm[:3] *= 1e3
    labels = save_nifti(seg, mm, tmp_path / "seg.nii.gz")
    p = load_dicom(folder, labels=labels)
    np.testing.assert_array_equal(p.structures, seg)
    assert np.all(p.tissue[p.structures == p.structure_names["vertebrae_L5"]] == TISSUE_ID["bone"])


def test_label_only_input(real_seg: Path) -> None:
    p = load_nifti(None, real_seg)
    assert p.ct is None and p.name == "example_seg_fast_force_split"
    body = p.tissue != TISSUE_ID["air"]
    labelled = p.structures != 0
    assert np.all(body[labelled & (p.tissue != TISSUE_ID["air"])])
    assert body.sum() > 1.2 * labelled.sum()  # gaps between organs are filled
    gaps = body & ~labelled & (p.tissue != TISSUE_ID["skin"])
    assert np.all(p.tissue[gaps] == TISSUE_ID["soft_tissue"])
    assert np.all(p.tissue[0, 0, :] == TISSUE_ID["air"])


def test_label_only_input_with_body_mask_on_another_grid(real_seg: Path, totalseg_dir: Path) -> None:
    body_file = totalseg_dir / "example_seg_fast_body_seg.nii.gz"
    p = load_nifti(None, real_seg, body=body_file)
    inside = np.zeros(p.shape, bool)
    inside[:, :, :30] = np.asanyarray(nib.load(body_file).dataobj) != 0
    np.testing.assert_array_equal(p.tissue != TISSUE_ID["air"], inside)


def test_ct_only_input(real_ct: Path) -> None:
    p = load_nifti(real_ct, None)
    assert p.structure_names == {} and not p.structures.any()
    inner = (p.tissue != TISSUE_ID["air"]) & (p.tissue != TISSUE_ID["skin"])
    assert np.all(p.tissue[inner & (p.ct > 250)] == TISSUE_ID["bone"])
    assert np.all(p.tissue[inner & (p.ct > -30) & (p.ct <= 250)] == TISSUE_ID["soft_tissue"])
    assert (p.tissue == TISSUE_ID["bone"]).sum() > 10000


def _l3_crop(real_ct: Path, real_seg: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A 60 x 45 x 24 voxel crop around L3, small enough to upsample in a test."""
    return crop_pair(real_ct, real_seg, (slice(31, 91), slice(20, 65), slice(62, 86)), tmp_path)


def test_isotropic_upsampling_keeps_field_of_view_and_smooths_bone(
    real_ct: Path, real_seg: Path, tmp_path: Path
) -> None:
    ct, seg = _l3_crop(real_ct, real_seg, tmp_path)
    coarse = load_nifti(ct, seg)
    fine = load_nifti(ct, seg, spacing_mm=1.0)
    assert fine.shape == tuple(3 * n for n in coarse.shape)
    np.testing.assert_allclose(fine.spacing, 0.001)
    # Same field of view: the outer voxel faces coincide.
    np.testing.assert_allclose(
        fine.affine[:3, 3] - fine.spacing / 2, coarse.affine[:3, 3] - coarse.spacing / 2, atol=1e-12
    )
    np.testing.assert_allclose(fine.ct.mean(), coarse.ct.mean(), rtol=0.02)
    l3 = coarse.structure_names["vertebrae_L3"]
    assert fine.structure_names == coarse.structure_names
    volume_ratio = (fine.structures == l3).sum() / (27 * (coarse.structures == l3).sum())
    assert 0.9 < volume_ratio < 1.1
    # Smooth, not staircased: the L3 surface is smaller than that of the blocky nearest-neighbour copy.
    blocky = resample_nearest(Volume(coarse.structures, coarse.affine, "l3"), fine.affine, fine.shape)

    def area(mask: np.ndarray) -> float:
        verts, faces, *_ = measure.marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)
        return measure.mesh_surface_area(verts, faces)

    assert area(fine.structures == l3) < 0.9 * area(blocky == l3)
    assert np.all(fine.tissue[fine.structures == l3] == TISSUE_ID["bone"])


def test_upsample_labels_keeps_one_voxel_structures() -> None:
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[2, 2, 2] = 7
    labels[2, 2, 3] = 9
    affine = np.diag([0.003, 0.003, 0.003, 1.0])
    fine = upsample_labels(Volume(labels, affine, "t"), np.diag([0.001, 0.001, 0.001, 1.0]) @ _shift(-1), (15, 15, 15))
    assert fine[7, 7, 7] == 7 and fine[7, 7, 10] == 9
    assert set(np.unique(fine)) == {0, 7, 9}


def _shift(voxels: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = voxels
    return out


@pytest.mark.slow
def test_real_ct_at_one_millimetre(real_ct: Path, real_seg: Path, totalseg_dir: Path) -> None:
    p = load_nifti(real_ct, real_seg, tissue_types=totalseg_dir / "tissue_types", spacing_mm=1.0)
    assert p.shape == (366, 303, 336)
    np.testing.assert_allclose(p.spacing, 0.001)
    assert set(LUMBAR) <= set(p.structure_names)
