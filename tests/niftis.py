"""Small NIfTI files written in tests: saving arrays and cropping the real CT and labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def save_nifti(data: np.ndarray, affine_mm: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, affine_mm), path)
    return path


def crop_pair(real_ct: Path, real_seg: Path, box: tuple[slice, slice, slice], folder: Path) -> tuple[Path, Path]:
    """The voxel box of the real CT and labels, saved as ct.nii.gz and seg.nii.gz in `folder`."""
    ct_img, seg_img = nib.load(real_ct), nib.load(real_seg)
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    ct = save_nifti(np.asanyarray(ct_img.dataobj)[box], ct_img.affine @ shift, folder / "ct.nii.gz")
    seg = save_nifti(np.asanyarray(seg_img.dataobj)[box], seg_img.affine @ shift, folder / "seg.nii.gz")
    return ct, seg
