"""Cortical breaches of a drilled channel and their Gertzbein-Robbins grade, batched.

A channel is the straight hole a drill of radius r has cut: from its entry point along its unit
axis to its depth (per environment). Its breach depth at a point of its centre line is how far
the drill's cross-section reaches beyond the vertebra's bone surface there, max(0, d + r) with d
the signed distance of the point to the surface (`sim.surgery.distance`, negative inside). The
channel's breach is the worst over its whole shaft (sampled every `step_m`), not at the tip
alone. It is counted once the drill is in: from 2 r + `entry_zone_m` past the first point where
the bit touches bone (d < r), so the entry cortex, where the bit starts partly outside the
surface it cuts into, is no breach (2 r covers a perpendicular entry, entry_zone_m an oblique
one), while a drill whose centre line runs just outside a wall it cuts into is a breach.

The breach direction is that of the bone's outward normal at the worst point, in the vertebra's
anatomical axes (`VertebraLandmarks.axes`): medial (toward the spinal canal, the side opposite
the point's side of the midline), lateral, superior, inferior or anterior. Gertzbein and Robbins
(Spine 1990) grade a screw by its breach: A none, B < 2 mm, C 2-4 mm, D 4-6 mm, E >= 6 mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.errors import InputError, require_number
from sim.surgery.distance import VertebraDistance

GRADES = ("A", "B", "C", "D", "E")
GRADE_EDGES_MM = (0.0, 2.0, 4.0, 6.0)  # a breach above 0 is B, from 2 mm C, from 4 mm D, from 6 mm E
DIRECTIONS = ("medial", "lateral", "superior", "inferior", "anterior")


def grade_edges(device: torch.device | str) -> torch.Tensor:
    """(3,) float32 the grade edges above B (GRADE_EDGES_MM[1:], mm) on `device`, for `grade`."""
    return torch.tensor(GRADE_EDGES_MM[1:], device=device)


def grade(breach_mm: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) int64 Gertzbein-Robbins grade index into GRADES of breach depths (N,) in mm:
    0 (A) for no breach, 1 (B) for (0, 2), 2 (C) for [2, 4), 3 (D) for [4, 6), 4 (E) from 6.
    edges: `grade_edges` on breach_mm's device, made once by a caller that must not copy from the
    host every call (a sync on CUDA); None makes them."""
    edges = grade_edges(breach_mm.device) if edges is None else edges
    return torch.where(breach_mm > 0, 1 + torch.bucketize(breach_mm, edges.to(breach_mm.dtype), right=True), 0)


@dataclass
class Breach:
    """The worst breach of N channels. depth_m (N,) metres (0: none); direction (N,) int64 index
    into DIRECTIONS (meaningful where depth_m > 0); weighted_mm (N,) the worst over the shaft of
    depth in mm times its direction's weight (the per-step cost); grade (N,) int64 into GRADES."""

    depth_m: torch.Tensor
    direction: torch.Tensor
    weighted_mm: torch.Tensor
    grade: torch.Tensor


class ChannelBreach:
    """Breaches of drilled channels in the lumbar vertebrae of `patients`.

    max_length_m: the longest channel measured (a drill's bit length); step_m: shaft sampling
    step; entry_zone_m: length past the bone entry (beyond 2 r) not counted; weights: per direction in
    DIRECTIONS (default: medial breaches, toward the canal, count twice). Patients need their
    landmarks (`sim.anatomy.derive`) for the anatomical axes.
    """

    def __init__(
        self,
        patients: Sequence[Patient],
        device: torch.device | str = "cpu",
        max_length_m: float = 0.08,
        step_m: float = 5e-4,
        entry_zone_m: float = 1e-3,
        weights: Sequence[float] = (2.0, 1.0, 1.0, 1.0, 1.0),
    ) -> None:
        require_number(max_length_m, "max_length_m", 0.0, 0.5, low_open=True)
        require_number(step_m, "step_m", 0.0, max_length_m, low_open=True)
        require_number(entry_zone_m, "entry_zone_m", 0.0, max_length_m)
        if len(weights) != len(DIRECTIONS):
            raise InputError(f"weights: expected one per direction {list(DIRECTIONS)}, got {list(weights)}")
        for name, w in zip(DIRECTIONS, weights):
            require_number(w, f"weights[{name}]", 0.0)
        self.field = VertebraDistance(patients, device)
        self.device = self.field.device
        axes = np.zeros((len(patients), len(self.field.levels), 3, 3), np.float32)
        centres = np.zeros((len(patients), len(self.field.levels), 3), np.float32)
        for p, patient in enumerate(patients):
            for level, name in enumerate(self.field.levels):
                if name in patient.landmarks:
                    axes[p, level] = patient.landmarks[name].axes
                    centres[p, level] = patient.landmarks[name].centre
        self.axes = torch.from_numpy(axes).to(self.device)  # rows: superior, posterior, right
        self.centres = torch.from_numpy(centres).to(self.device)
        self.offsets = torch.arange(0.0, max_length_m + step_m / 2, step_m, device=self.device)  # (S,)
        self.entry_zone_m = entry_zone_m
        self.weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        self.edges = grade_edges(self.device)

    def directions(
        self, normals: torch.Tensor, points: torch.Tensor, patient_idx: torch.Tensor, level_idx: torch.Tensor
    ) -> torch.Tensor:
        """(N, S) int64 index into DIRECTIONS of outward normals (N, S, 3) at points (N, S, 3)."""
        axes = self.axes[patient_idx, level_idx]  # (N, 3, 3)
        local = normals @ axes.transpose(-1, -2)  # components along superior, posterior, right
        side = ((points - self.centres[patient_idx, level_idx][:, None]) * axes[:, None, 2]).sum(-1)
        medial = -torch.sign(side) * local[..., 2]  # toward the midline (and the canal beyond it)
        scores = torch.stack([medial, -medial, local[..., 0], -local[..., 0], -local[..., 1]], -1)
        return scores.argmax(-1)

    def __call__(
        self,
        entry: torch.Tensor,
        axis: torch.Tensor,
        depth_m: torch.Tensor,
        radius_m: float,
        patient_idx: torch.Tensor,
        level_idx: torch.Tensor,
    ) -> Breach:
        """The worst breach of channels from entry (N, 3) along unit axis (N, 3) to depth_m (N,)
        (clamped to max_length_m), drill radius radius_m, in vertebra level_idx (N,) of patients
        patient_idx (N,) (pairs that exist: `field.check_levels`). Sync-free."""
        points = entry[:, None] + axis[:, None] * self.offsets[None, :, None]  # (N, S, 3)
        d, normals = self.field.distance_and_normal(points, patient_idx, level_idx)  # (N, S), (N, S, 3)
        drilled = self.offsets[None] <= depth_m[:, None]
        touching = (d < radius_m) & drilled
        # Where the bit first touches bone; channels that never touch count from beyond their end.
        first = torch.where(touching, self.offsets[None], torch.inf).amin(-1, keepdim=True)
        counted = drilled & (self.offsets[None] >= first + 2 * radius_m + self.entry_zone_m)
        depth = torch.where(counted, (d + radius_m).clamp_min(0.0), 0.0)  # (N, S) metres
        direction = self.directions(normals, points, patient_idx, level_idx)
        weighted = depth * 1000.0 * self.weights[direction]
        worst = depth.argmax(-1, keepdim=True)
        depth_m_worst = depth.gather(-1, worst)[:, 0]
        return Breach(
            depth_m=depth_m_worst,
            direction=direction.gather(-1, worst)[:, 0],
            weighted_mm=weighted.amax(-1),
            grade=grade(depth_m_worst * 1000.0, self.edges),
        )
