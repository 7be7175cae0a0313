"""`PatientBank`: several patients' tissue volumes on one device, indexed per environment.

All tissue volumes live in one flat uint8 tensor (each padded by one voxel of air on every side,
so a clamped trilinear lookup outside a patient reads air, never a neighbour). Memory is the sum
of the volumes, independent of how many environments index them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.errors import InputError


class PatientBank:
    """Patients stacked for batched lookup.

    tissue_flat: (V,) uint8, all padded volumes back to back.
    offsets: (P,) int64 start of each patient's padded block in `tissue_flat`.
    dims: (P, 3) int64 padded volume shape (I + 2, J + 2, K + 2).
    patient_to_voxel: (P, 3, 4) float32, patient-frame metres -> padded voxel index.
    voxel_to_patient: (P, 4, 4) float64 original affines (unpadded indices), for reference.
    """

    def __init__(self, patients: Sequence[Patient], device: torch.device | str = "cpu") -> None:
        if len(patients) == 0:
            raise InputError("patient bank: expected at least one patient, got none")
        self.patients = list(patients)
        self.device = torch.device(device)
        dims = [tuple(np.array(p.shape) + 2) for p in self.patients]
        offsets = np.concatenate([[0], np.cumsum([np.prod(d) for d in dims])[:-1]]).tolist()
        to_vox = []
        for p in self.patients:
            w2v = np.linalg.inv(p.affine)[:3]
            w2v[:, 3] += 1.0  # the air border shifts every index by one
            to_vox.append(w2v)
        self.tissue_flat = self.stack([p.tissue for p in self.patients])
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=self.device)
        self.dims = torch.tensor(dims, dtype=torch.int64, device=self.device)
        self.patient_to_voxel = torch.tensor(np.stack(to_vox), dtype=torch.float32, device=self.device)
        self.voxel_to_patient = torch.tensor(np.stack([p.affine for p in self.patients]), dtype=torch.float64)

    def stack(self, volumes: Sequence[np.ndarray]) -> torch.Tensor:
        """(V,) one volume per patient in the bank's layout: each padded by one voxel of 0 on
        every side and raveled back to back, so `offsets` and `dims` index it. On the bank's device.
        """
        return torch.from_numpy(np.concatenate([np.pad(v, 1, constant_values=0).ravel() for v in volumes])).to(
            self.device
        )

    def __len__(self) -> int:
        return len(self.patients)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.patients]

    def indices(self, split: str) -> torch.Tensor:
        """(M,) int64 indices of the patients tagged `split` ("train" or "test")."""
        idx = [i for i, p in enumerate(self.patients) if p.split == split]
        return torch.tensor(idx, dtype=torch.int64, device=self.device)

    def check_index(self, patient_idx: torch.Tensor, n: int) -> torch.Tensor:
        """Validate a per-environment patient index (N,) and return it as int64 on device."""
        if patient_idx.shape != (n,):
            raise InputError(f"patient_idx: expected shape ({n},) matching the poses, got {tuple(patient_idx.shape)}")
        patient_idx = patient_idx.to(self.device, torch.int64)
        if n and (int(patient_idx.min()) < 0 or int(patient_idx.max()) >= len(self)):
            raise InputError(
                f"patient_idx: expected values in [0, {len(self)}), got {patient_idx.unique().tolist()[:10]}"
            )
        return patient_idx

    def nbytes(self) -> int:
        return self.tissue_flat.numel() * self.tissue_flat.element_size()
