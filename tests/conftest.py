"""Shared fixtures: the real TotalSegmentator example data the repository ships."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
TOTALSEG_DIR = REPO / "assets" / "patients" / "totalseg_example"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where pyproject.toml lives)."""
    return REPO


@pytest.fixture(scope="session")
def totalseg_dir() -> Path:
    """`assets/patients/totalseg_example`: a real 3 mm CT with TotalSegmentator v2 labels."""
    assert (TOTALSEG_DIR / "example_ct.nii.gz").is_file(), f"the shipped real CT example is missing from {TOTALSEG_DIR}"
    return TOTALSEG_DIR


@pytest.fixture(scope="session")
def real_ct(totalseg_dir: Path) -> Path:
    return totalseg_dir / "example_ct.nii.gz"


@pytest.fixture(scope="session")
def real_seg(totalseg_dir: Path) -> Path:
    return totalseg_dir / "example_seg_fast_force_split.nii.gz"


def write_dicom_series(
    folder: Path, hu: np.ndarray, affine_lps_mm: np.ndarray, intercept: float = -1024.0
) -> list[Path]:
    """Write `hu` (I, J, K) as a real CT DICOM series (one int16 file per k) into `folder`.

    Voxel (i, j, k) is column i, row j of slice k; `affine_lps_mm` maps it to LPS millimetres as
    DICOM does. Files are named in reverse slice order, so a loader must sort by position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    col_step, row_step = affine_lps_mm[:3, 0], affine_lps_mm[:3, 1]
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in (affine_lps_mm @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [
            float(v) for v in (*col_step / np.linalg.norm(col_step), *row_step / np.linalg.norm(row_step))
        ]
        ds.PixelSpacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]
        ds.SliceThickness = float(np.linalg.norm(affine_lps_mm[:3, 2]))
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
        ds.PixelData = np.round(hu[:, :, k].T - intercept).astype("<i2").tobytes()
        path = folder / f"IM{hu.shape[2] - 1 - k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def real_dicom(totalseg_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Eight slices of the real CT written as a DICOM series with the usual IOP (1,0,0,0,1,0).

    Returns (series folder, expected RAS HU (I, J, 8) float32, expected RAS affine in metres).
    """
    img = nib.load(totalseg_dir / "example_ct.nii.gz")
    k0 = 50
    hu = np.asanyarray(img.dataobj)[:, :, k0 : k0 + 8].astype(np.float32)
    ras_mm = img.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, k0], [0, 0, 0, 1]], float)
    # Flip i and j so that the LPS columns point +x, +y as on most scanners.
    flip = np.array([[-1, 0, 0, hu.shape[0] - 1], [0, -1, 0, hu.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    lps_mm = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_mm @ flip
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_dicom_series(folder, hu[::-1, ::-1, :], lps_mm)
    expected_affine = ras_mm.copy()
    expected_affine[:3] *= 1e-3
    return folder, hu, expected_affine
