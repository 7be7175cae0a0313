"""`VertebraDistance`: signed distance to each lumbar vertebra's bone surface, batched lookups.

For every patient and lumbar level (L1-L5 present in its labels) the vertebra's label mask is
cropped to its bounding box plus a margin and turned into a signed distance field in metres
(negative inside the bone, positive outside; scipy's exact Euclidean distance transform with the
voxel spacing, so anisotropic voxels are measured right). The zero level lies halfway between
inside and outside voxel centres, so the field is accurate to about half a voxel. All crops live
back to back in one flat float32 tensor, laid out like `sim.anatomy.bank.PatientBank` (each crop
padded by one voxel of "far outside"), and are read with the same trilinear gather as the
ultrasound slicer: one lookup over all environments, no loop over environments or levels.

Where a point lies outside a crop the lookup clamps onto the crop's border, which is at least
`margin_m` from the bone: the value read there is a lower bound of the true (positive) distance,
so far-away points never read as bone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from sim.anatomy.landmarks import LUMBAR
from sim.anatomy.patient import Patient
from sim.errors import InputError, require_number
from sim.ultrasound.slicing import sample_trilinear


def signed_distance(mask: np.ndarray, spacing_m: np.ndarray) -> np.ndarray:
    """(I, J, K) float32 signed distance (m) to the surface of boolean `mask` (I, J, K), negative
    inside; spacing_m (3,) the voxel size. The surface lies halfway between inside and outside
    voxel centres (hence the half-voxel shift of both distance transforms)."""
    half = 0.5 * float(np.min(spacing_m))
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_m)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_m)
    return np.where(mask, half - inside, outside - half).astype(np.float32)


class VertebraDistance:
    """Signed distance fields of the lumbar vertebrae of `patients`.

    levels: the level names, index = level id (LUMBAR: L1..L5). crop[p, l]: the crop index of
    patient p's level l in the flat layout, -1 where the patient lacks that level. flat (V,)
    float32; offsets (C,) and dims (C, 3) locate each padded crop; patient_to_voxel (C, 3, 4)
    maps patient-frame metres to padded crop voxel coordinates.
    """

    def __init__(self, patients: Sequence[Patient], device: torch.device | str = "cpu", margin_m: float = 0.02):
        require_number(margin_m, "margin_m", 0.0, 0.2, low_open=True)
        if not patients:
            raise InputError("patients: expected at least one patient, got none")
        self.levels = LUMBAR
        self.device = torch.device(device)
        crop = np.full((len(patients), len(LUMBAR)), -1, dtype=np.int64)
        volumes, to_voxel = [], []
        for p, patient in enumerate(patients):
            spacing = patient.spacing
            pad = np.ceil(margin_m / spacing).astype(int)
            for level, name in enumerate(LUMBAR):
                sid = patient.structure_names.get(name)
                mask = patient.structures == sid if sid is not None else None
                if mask is None or not mask.any():
                    continue
                idx = np.argwhere(mask)
                lo = np.maximum(idx.min(0) - pad, 0)
                hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
                box = tuple(slice(a, b) for a, b in zip(lo, hi))
                volumes.append(signed_distance(mask[box], spacing))
                w2v = np.linalg.inv(patient.affine)[:3].copy()
                w2v[:, 3] += 1.0 - lo  # crop origin, and the one-voxel border of the flat layout
                to_voxel.append(w2v)
                crop[p, level] = len(volumes) - 1
        if not volumes:
            raise InputError(f"patients {[p.name for p in patients]}: expected lumbar vertebra labels {list(LUMBAR)}")
        far = float(max(np.max(v) for v in volumes))  # the border value: as far from bone as any crop reaches
        dims = [tuple(np.array(v.shape) + 2) for v in volumes]
        offsets = np.concatenate([[0], np.cumsum([np.prod(d) for d in dims])[:-1]])
        flat = np.concatenate([np.pad(v, 1, constant_values=far).ravel() for v in volumes])
        self.flat = torch.from_numpy(flat).to(self.device)
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64, device=self.device)
        self.dims = torch.as_tensor(np.array(dims), dtype=torch.int64, device=self.device)
        self.patient_to_voxel = torch.as_tensor(np.stack(to_voxel), dtype=torch.float32, device=self.device)
        self.crop = torch.as_tensor(crop, device=self.device)

    def check_levels(self, patient_idx: torch.Tensor, level_idx: torch.Tensor) -> None:
        """InputError naming the patients and levels without labels (reads values: a host sync)."""
        missing = self.crop[patient_idx, level_idx] < 0
        if bool(missing.any()):
            pairs = sorted({(int(p), self.levels[int(lv)]) for p, lv in zip(patient_idx[missing], level_idx[missing])})
            raise InputError(f"patient, level {pairs}: expected a labelled vertebra (the patient lacks that level)")

    def distance(self, points: torch.Tensor, patient_idx: torch.Tensor, level_idx: torch.Tensor) -> torch.Tensor:
        """(N, S) signed distance (m, negative inside the bone) of points (N, S, 3), patient frame,
        to vertebra level_idx (N,) of patient patient_idx (N,); the pairs must exist
        (`check_levels`; unchecked here, sync-free)."""
        c = self.crop[patient_idx, level_idx]
        m = self.patient_to_voxel[c]  # (N, 3, 4)
        coords = points @ m[:, :, :3].transpose(-1, -2) + m[:, None, :, 3]
        return sample_trilinear(self.flat, self.offsets[c], self.dims[c], coords)

    def normal(
        self, points: torch.Tensor, patient_idx: torch.Tensor, level_idx: torch.Tensor, step_m: float = 5e-4
    ) -> torch.Tensor:
        """(N, S, 3) unit outward surface normals at points (N, S, 3): the central-difference
        gradient of the distance field over +-step_m (zero where the field is flat)."""
        eye = torch.eye(3, device=points.device, dtype=points.dtype) * step_m
        shifted = torch.cat([points[:, :, None] + eye, points[:, :, None] - eye], 2)  # (N, S, 6, 3)
        n, s = points.shape[:2]
        d = self.distance(shifted.reshape(n, s * 6, 3), patient_idx, level_idx).reshape(n, s, 6)
        grad = d[..., :3] - d[..., 3:]
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
