"""Volume slices in the probe's image plane, batched over environments.

A learned renderer (and anything else that wants "what the probe's plane cuts through") needs the
CT or the tissue labels at every output pixel. The pixels' probe-frame (x, z) positions go
through each environment's pose to the patient frame, then through the bank's
`patient_to_voxel` into its padded volume, and are sampled there: trilinear for CT, nearest for
labels. Everything is one gather over all environments (no loop over environments or patients).
"""

from __future__ import annotations

import numpy as np
import torch

from sim.anatomy.bank import PatientBank
from sim.errors import InputError
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.stages import probe_to_voxel

HU_MIN, HU_MAX = -1000.0, 1000.0  # CT window mapped to [0, 1]: air 0, dense bone 1
INPUTS = ("ct", "labels")


def normalise_hu(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units to [0, 1]: (HU + 1000) / 2000, clipped. Any shape, float32."""
    return np.clip((hu.astype(np.float32) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)


def ct_flat(bank: PatientBank) -> torch.Tensor:
    """(V,) float16 normalised CT of every patient, laid out exactly like `bank.tissue_flat`.

    Each volume is padded by one voxel of air (0) so that clamped lookups outside a patient read
    air, and `bank.offsets` / `bank.dims` index it. Float16 halves the memory (2 bytes a voxel)
    and keeps about 1 HU of precision. Raises `InputError` for a patient without CT.
    """
    missing = [p.name for p in bank.patients if p.ct is None]
    if missing:
        raise InputError(
            f"patients {missing} ct: expected a CT volume in HU for input='ct' (they have tissue labels only; "
            "use input='labels')"
        )
    return bank.stack([normalise_hu(p.ct).astype(np.float16) for p in bank.patients])


def plane_voxels(pixels_xz: torch.Tensor, poses: torch.Tensor, patient_to_voxel: torch.Tensor) -> torch.Tensor:
    """Padded-voxel coordinates (N, P, 3) of image pixels.

    pixels_xz (P, 2) probe-frame (x, z) in metres (the image plane is y = 0); poses (N, 7) probe
    poses in the patient frame; patient_to_voxel (N, 3, 4) each environment's patient's map.
    """
    m = probe_to_voxel(poses, patient_to_voxel)
    # Only the x and z columns matter: every pixel has y = 0.
    return pixels_xz @ m[:, :, 0::2].transpose(-1, -2) + m[:, None, :, 3]


def _flat_index(
    offsets: torch.Tensor, dims: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """Flat indices (N, P) of integer voxels i, j, k (N, P) in each environment's padded block."""
    stride_i = (dims[:, 1] * dims[:, 2])[:, None]
    return offsets[:, None] + i * stride_i + j * dims[:, 2, None] + k


def sample_nearest(flat: torch.Tensor, offsets: torch.Tensor, dims: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Nearest-voxel values (N, P) at voxel coordinates (N, P, 3), in `flat`'s dtype.

    offsets (N,), dims (N, 3) locate each environment's padded block. Coordinates outside a
    volume clamp onto its air border.
    """
    idx = [coords[..., a].round().long().clamp(0, None).minimum(dims[:, a, None] - 1) for a in range(3)]
    return flat[_flat_index(offsets, dims, *idx)]


def sample_trilinear(
    flat: torch.Tensor, offsets: torch.Tensor, dims: torch.Tensor, coords: torch.Tensor
) -> torch.Tensor:
    """Trilinear float32 values (N, P) at voxel coordinates (N, P, 3); see `sample_nearest`."""
    hi = (dims - 1).to(coords.dtype) - 1e-4
    pos = [coords[..., a].clamp_min(0).minimum(hi[:, a, None]) for a in range(3)]
    lo = [p.floor() for p in pos]
    frac = [p - floor for p, floor in zip(pos, lo)]
    i, j, k = (floor.long() for floor in lo)
    out = torch.zeros_like(coords[..., 0])
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                w = (
                    (frac[0] if di else 1 - frac[0])
                    * (frac[1] if dj else 1 - frac[1])
                    * (frac[2] if dk else 1 - frac[2])
                )
                out += w * flat[_flat_index(offsets, dims, i + di, j + dj, k + dk)].float()
    return out


def sample_trilinear_gradient(
    flat: torch.Tensor, offsets: torch.Tensor, dims: torch.Tensor, coords: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear float32 values (N, P) at voxel coordinates (N, P, 3) and the interpolant's gradient
    (N, P, 3) per voxel step, from the same eight corners (one gather, not six more samples); see
    `sample_nearest`. Along an axis clamped at a volume's border the gradient is that of its edge cell."""
    hi = (dims - 1).to(coords.dtype) - 1e-4
    pos = [coords[..., a].clamp_min(0).minimum(hi[:, a, None]) for a in range(3)]
    lo = [p.floor() for p in pos]
    f = [p - floor for p, floor in zip(pos, lo)]
    i, j, k = (floor.long() for floor in lo)
    value = torch.zeros_like(coords[..., 0])
    grad = torch.zeros_like(coords)
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                c = flat[_flat_index(offsets, dims, i + di, j + dj, k + dk)].float()
                wi, wj, wk = (f[0] if di else 1 - f[0]), (f[1] if dj else 1 - f[1]), (f[2] if dk else 1 - f[2])
                si, sj, sk = (1.0 if di else -1.0), (1.0 if dj else -1.0), (1.0 if dk else -1.0)
                value += wi * wj * wk * c
                grad += torch.stack([si * wj * wk, sj * wi * wk, sk * wi * wj], -1) * c[..., None]
    return value, grad


class PlaneSlicer:
    """The CT or tissue-label slice in each environment's image plane, at the probe's pixels.

    `slice(poses (N, 7), patient_idx (N,)) -> (N, H, W)` float32: normalised CT in [0, 1]
    (input="ct", trilinear) or tissue class ids as floats (input="labels", nearest), 0 outside
    the probe's field of view.
    """

    def __init__(self, bank: PatientBank, probe: ProbeSpec, input: str = "ct") -> None:
        if input not in INPUTS:
            raise InputError(f"input: expected one of {INPUTS}, got {input!r}")
        self.bank, self.probe, self.input = bank, probe, input
        dev = bank.device
        self.volume = ct_flat(bank) if input == "ct" else bank.tissue_flat
        _, inside = probe.scan_coordinates()
        self.inside = inside.to(dev)  # (H, W) bool
        self.pixels_xz = probe.pixel_positions().reshape(-1, 2).to(dev, torch.float32)  # (H*W, 2)

    def slice(self, poses: torch.Tensor, patient_idx: torch.Tensor) -> torch.Tensor:
        """(N, H, W) float32 slice values; poses on the bank's device, patient_idx (N,) int64 checked."""
        bank = self.bank
        coords = plane_voxels(self.pixels_xz, poses, bank.patient_to_voxel[patient_idx])
        offsets, dims = bank.offsets[patient_idx], bank.dims[patient_idx]
        if self.input == "ct":
            values = sample_trilinear(self.volume, offsets, dims, coords)
        else:
            values = sample_nearest(self.volume, offsets, dims, coords).float()
        h, w = self.inside.shape
        return values.reshape(-1, h, w) * self.inside
