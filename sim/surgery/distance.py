"""`VertebraDistance`: signed distance to each lumbar vertebra's bone surface, batched lookups.

For every patient and lumbar level (L1-L5 present in its labels) the vertebra's label mask is
cropped to its bounding box plus a margin and turned into a signed distance field in metres
(negative inside the bone, positive outside; scipy's exact Euclidean distance transform with the
voxel spacing, so anisotropic voxels are measured right). The zero level lies halfway between
inside and outside voxel centres, so the field is accurate to about half a voxel. All crops live
back to back in one flat float32 tensor (`CropVolumes`, laid out like `sim.anatomy.bank.PatientBank`: each crop
padded by one voxel of "far outside"), read with the same trilinear gather as the
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
from sim.ultrasound.slicing import sample_trilinear, sample_trilinear_gradient


def bounding_box(mask: np.ndarray, grow: np.ndarray | int = 1) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The bounding box of `mask` (I, J, K) grown by `grow` voxels per axis (an int or (3,) ints,
    clipped to the volume) and its low corner (3,) float64, or None for an empty mask. At least
    one voxel of growth keeps every interpolation across the mask's border, and every inside
    distance to the nearest outside voxel, within the crop."""
    grow = np.broadcast_to(np.asarray(grow, dtype=np.int64), (3,))
    lo, hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        lo.append(max(int(hit[0]) - int(grow[axis]), 0))
        hi.append(min(int(hit[-1]) + 1 + int(grow[axis]), mask.shape[axis]))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), np.array(lo, dtype=np.float64)


class CropVolumes:
    """Cropped volumes back to back in one flat tensor (the `PatientBank` layout, each padded by
    one voxel of `pad`, so `sample_trilinear` reads them and lookups outside a crop clamp onto its
    pad). crops[i]: (volume (I, J, K), the crop's low corner (3,) in its patient's voxel indices),
    or None for a single voxel of `pad`; affines[i]: its patient's (4, 4) voxel -> patient frame.
    dtype: the stored values' (float16 halves the memory; lookups are float32)."""

    def __init__(
        self,
        crops: Sequence[tuple[np.ndarray, np.ndarray] | None],
        affines: Sequence[np.ndarray],
        pad: float,
        device: torch.device | str,
        dtype: type = np.float16,
    ) -> None:
        volumes, to_voxel = [], []
        for crop, affine in zip(crops, affines):
            volume, lo = crop if crop is not None else (np.full((1, 1, 1), pad, np.float32), np.zeros(3))
            volumes.append(np.pad(volume.astype(dtype), 1, constant_values=pad))
            w2v = np.linalg.inv(affine)[:3].copy()
            w2v[:, 3] += 1.0 - lo  # the crop's origin and the one-voxel pad
            to_voxel.append(w2v)
        dims = np.array([v.shape for v in volumes])
        offsets = np.concatenate([[0], np.cumsum(dims.prod(1))[:-1]])
        self.flat = torch.from_numpy(np.concatenate([v.ravel() for v in volumes])).to(device)
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64, device=device)
        self.dims = torch.as_tensor(dims, dtype=torch.int64, device=device)
        self.patient_to_voxel = torch.as_tensor(np.stack(to_voxel), dtype=torch.float32, device=device)

    def sample(self, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(N, S) float32 trilinear values at points (N, S, 3), patient frame, of crops idx (N,)."""
        m = self.patient_to_voxel[idx]
        coords = points @ m[:, :, :3].transpose(-1, -2) + m[:, None, :, 3]
        return sample_trilinear(self.flat, self.offsets[idx], self.dims[idx], coords)

    def sample_with_gradient(self, points: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, S) float32 trilinear values at points (N, S, 3), patient frame, of crops idx (N,), and their
        gradient (N, S, 3) with respect to the points (per metre), from one gather."""
        m = self.patient_to_voxel[idx]
        coords = points @ m[:, :, :3].transpose(-1, -2) + m[:, None, :, 3]
        value, grad = sample_trilinear_gradient(self.flat, self.offsets[idx], self.dims[idx], coords)
        return value, grad @ m[:, :, :3]  # chain rule: d value / d point = (d coords / d point)^T grad

    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


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

    levels: the level names, index = level id (LUMBAR: L1..L5). crop[p, l]: the index in
    `volumes` (float32 `CropVolumes`) of patient p's level l, -1 where the patient lacks that level.
    """

    def __init__(self, patients: Sequence[Patient], device: torch.device | str = "cpu", margin_m: float = 0.02):
        require_number(margin_m, "margin_m", 0.0, 0.2, low_open=True)
        if not patients:
            raise InputError("patients: expected at least one patient, got none")
        self.levels = LUMBAR
        self.device = torch.device(device)
        crop = np.full((len(patients), len(LUMBAR)), -1, dtype=np.int64)
        crops, affines = [], []
        for p, patient in enumerate(patients):
            grow = np.ceil(margin_m / patient.spacing).astype(np.int64)
            for level, name in enumerate(LUMBAR):
                sid = patient.structure_names.get(name)
                box = bounding_box(patient.structures == sid, grow) if sid is not None else None
                if box is None:
                    continue
                crops.append((signed_distance(patient.structures[box[0]] == sid, patient.spacing), box[1]))
                affines.append(patient.affine)
                crop[p, level] = len(crops) - 1
        if not crops:
            raise InputError(f"patients {[p.name for p in patients]}: expected lumbar vertebra labels {list(LUMBAR)}")
        far = float(max(np.max(v) for v, _ in crops))  # the pad: as far from bone as any crop reaches
        self.volumes = CropVolumes(crops, affines, far, self.device, np.float32)
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
        return self.volumes.sample(points, self.crop[patient_idx, level_idx])

    def distance_and_normal(
        self, points: torch.Tensor, patient_idx: torch.Tensor, level_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, S) signed distance (m) as `distance` and (N, S, 3) unit outward surface normals at points
        (N, S, 3): the gradient of the field's trilinear interpolant (zero where the field is flat)."""
        d, grad = self.volumes.sample_with_gradient(points, self.crop[patient_idx, level_idx])
        return d, grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class StructureDistance:
    """Signed distance (m, negative inside) to the union of the structures `names` present in each
    patient (e.g. the spinal canal and cord), cropped to them plus margin_m; a patient with none of
    them is an InputError naming it."""

    def __init__(
        self,
        patients: Sequence[Patient],
        names: Sequence[str],
        device: torch.device | str = "cpu",
        margin_m: float = 0.02,
    ) -> None:
        require_number(margin_m, "margin_m", 0.0, 0.2, low_open=True)
        crops, lacking = [], []
        for patient in patients:
            ids = [patient.structure_names[n] for n in names if n in patient.structure_names]
            mask = np.isin(patient.structures, ids) if ids else np.zeros(patient.shape, bool)
            box = bounding_box(mask, np.ceil(margin_m / patient.spacing).astype(np.int64))
            if box is None:
                lacking.append(patient.name)
                continue
            crops.append((signed_distance(mask[box[0]], patient.spacing), box[1]))
        if lacking:
            raise InputError(f"patients {lacking}: expected labels of any of {list(names)}")
        far = float(max(np.max(v) for v, _ in crops))
        self.volumes = CropVolumes(crops, [p.affine for p in patients], far, device, np.float32)

    def distance(self, points: torch.Tensor, patient_idx: torch.Tensor) -> torch.Tensor:
        """(N, S) signed distance (m) of points (N, S, 3), patient frame, of patients patient_idx (N,). Sync-free."""
        return self.volumes.sample(points, patient_idx)
