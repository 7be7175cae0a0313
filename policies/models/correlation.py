"""A cost volume between the newest ultrasound image and the goal image: how well they match when
one is shifted against the other.

A probe that sits beside the goal sees the goal's anatomy shifted across the image (laterally;
with biplane imaging, the elevation offset as a shift in the second plane) and in depth (the
probe pressed or tilted differently). A network that reads the shift from flattened features
has to learn it per anatomy and memorises its training patients; a cost volume turns it into the
position of a peak, the same for every body (as optical-flow networks do, FlowNet's correlation
layer). The images are first averaged over pool x pool pixels (the speckle averages out, the bone
surfaces and their shadows stay) and normalised per image (zero mean, unit variance), so the
goal's gain and dynamic range draw does not change the match.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policies.models.image_encoders import ImageEncoderModel
from sim.errors import InputError


class ShiftCorrelation(nn.Module):
    """(B, H, planes * H) newest and goal images -> (B, planes * (2 dy + 1) * (2 dx + 1)) matches.

    Each H x H plane (side by side, as `sim.ultrasound.biplane.side_by_side` places them) is
    pooled to (H / pool) x (H / pool) cells; entry (dy, dx) of a plane is the mean product of the
    normalised goal cells and the newest image's cells shifted by dy rows and dx columns (zero
    outside the image), for |dy| <= max_shift_rows and |dx| <= max_shift_columns cells.

    bands: `band_volumes` splits the goal's rows into this many depth bands of equal height and
    matches each band alone; the plane's volume is their mean. A probe rocked in the image plane
    by theta sees the anatomy at depth d moved across by d tan(theta): the deep band's match
    peaks at another column shift than the shallow band's, where one volume over the whole
    plane shows a single, blurred peak (5 deg over 40 mm of depth: 3.5 mm, a cell of 4 px).
    """

    def __init__(
        self, image_shape: tuple[int, int], pool: int, max_shift_rows: int, max_shift_columns: int, bands: int = 1
    ) -> None:
        super().__init__()
        height, width = image_shape
        if height % pool or width % height:
            raise InputError(
                f"shift correlation image shape: expected planes of {height} x {height} side by side, "
                f"divisible by pool {pool}, got {height} x {width}"
            )
        self.planes, self.pool = width // height, pool
        self.cells = height // pool
        if not (isinstance(bands, int) and bands >= 1 and self.cells % bands == 0):
            raise InputError(
                f"shift correlation bands: expected a whole number >= 1 dividing the {self.cells} rows of cells "
                f"(image side {height} / pool {pool}), got {bands!r}"
            )
        self.bands = bands
        self.dy, self.dx = max_shift_rows, max_shift_columns
        self.output_dim = self.planes * (2 * self.dy + 1) * (2 * self.dx + 1)
        rows = torch.arange(self.cells) // (self.cells // bands)
        # (bands, cells): which rows of cells each band holds
        band_rows = (rows[None, :] == torch.arange(bands)[:, None]).float()
        self.register_buffer("band_rows", band_rows[:, :, None], persistent=False)

    def cells_of(self, images: torch.Tensor) -> torch.Tensor:
        """(B * planes, cells, cells) pooled, normalised planes of images (B, H, planes * H)."""
        b, h, _ = images.shape
        planes = images.reshape(b, h, self.planes, h).permute(0, 2, 1, 3).reshape(b * self.planes, 1, h, h)
        pooled = F.avg_pool2d(planes, self.pool)[:, 0]
        mean = pooled.mean((-2, -1), keepdim=True)
        std = pooled.std((-2, -1), keepdim=True).clamp_min(1e-3)  # a blank image stays zero, not NaN
        return (pooled - mean) / std

    def band_volumes(self, newest: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(B, planes, bands, 2 dy + 1, 2 dx + 1): each depth band of the goal's cells matched
        alone (mean product over the band's cells) against the newest image at every shift."""
        cur, ref = self.cells_of(newest), self.cells_of(goal)
        padded = F.pad(cur, (self.dx, self.dx, self.dy, self.dy))  # zero outside the image
        size = padded.shape[-2:]
        # Every shift at once as a cross-correlation by FFT: the goal, zero-padded to the padded
        # size, never wraps onto the shifts kept (7 times faster than shifted windows on the CPU).
        # Each band is the goal with its other rows zeroed; the band axis is added on the real
        # side, before the FFT (ONNX has no unsqueeze of a complex tensor).
        bands = ref[:, None] * self.band_rows
        spectrum = torch.fft.rfft2(padded[:, None], s=size) * torch.fft.rfft2(bands, s=size).conj()
        match = torch.fft.irfft2(spectrum, s=size)[..., : 2 * self.dy + 1, : 2 * self.dx + 1]
        match = match / (self.cells * self.cells // self.bands)
        return match.reshape(newest.shape[0], self.planes, self.bands, *match.shape[-2:])

    def forward(self, newest: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self.band_volumes(newest, goal).mean(2).reshape(newest.shape[0], self.output_dim)


class MatchPeaks(nn.Module):
    """(B, planes * R * C) cost volumes (R = 2 dy + 1 rows, C = 2 dx + 1 columns of shifts per
    volume; `planes` volumes: one per plane, or per plane and depth band of
    `ShiftCorrelation.band_volumes`) -> (B, planes * 3): per volume the shift where the match
    peaks, in cells (rows, columns; the newest image's shift against the goal), and its height.

    The peak is a soft argmax (the shifts weighted by softmax(sharpness * match), as DSNT and
    soft-argmax keypoint heads read heatmaps): differentiable, between cells where two cells
    match alike, and independent of where in the volume the peak sits - what an MLP over the raw
    volume has to learn cell by cell from reward. No weights.
    """

    def __init__(self, planes: int, max_shift_rows: int, max_shift_columns: int, sharpness: float) -> None:
        super().__init__()
        if not (isinstance(sharpness, (int, float)) and math.isfinite(sharpness) and sharpness > 0):
            raise InputError(f"match peak sharpness: expected a finite number > 0 (per unit of match), got {sharpness}")
        self.planes, self.sharpness = planes, float(sharpness)
        rows = torch.arange(-max_shift_rows, max_shift_rows + 1, dtype=torch.float32)
        columns = torch.arange(-max_shift_columns, max_shift_columns + 1, dtype=torch.float32)
        grid = torch.stack(torch.meshgrid(rows, columns, indexing="ij"), -1).reshape(-1, 2)
        self.register_buffer("shifts", grid, persistent=False)  # (R * C, 2) row, column shift in cells
        self.output_dim = 3 * planes

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        match = volume.reshape(volume.shape[0], self.planes, -1)
        weights = torch.softmax(self.sharpness * match, -1)
        shift = weights @ self.shifts  # (B, planes, 2)
        height = match.amax(-1, keepdim=True)
        return torch.cat([shift, height], -1).reshape(volume.shape[0], self.output_dim)


class FrameCorrelations(nn.Module):
    """(B, F, H, planes * H) image stacks (frames newest first, the goal image last) -> the cost
    volume of every frame against the goal, (B, (F - 1) * (ShiftCorrelation.output_dim [+
    MatchPeaks.output_dim])).

    The older frames' volumes beside the newest one show how the match moved with the last
    action (the proprioception holds the action): which way is toward the goal. With
    peak_sharpness set, each volume is followed by its `MatchPeaks` (where the match peaks and how
    high), per plane and depth band (correlation_cfg bands: the bands' peaks tell how the probe
    is rocked in each plane; the volume is the whole plane's). No weights: what the policy learns
    is the MLP head that turns peaks into motion, the same for every body.
    """

    output_channels = None  # flattened output, as rsl-rl's CNNModel requires

    def __init__(
        self, input_shape: tuple[int, int, int], peak_sharpness: float | None = None, **correlation_cfg
    ) -> None:
        super().__init__()
        frames, height, width = input_shape
        if frames < 2:
            raise InputError(f"correlation model input frames: expected at least 2 (images and a goal), got {frames}")
        self.correlation = c = ShiftCorrelation((height, width), **correlation_cfg)
        self.peaks = None if peak_sharpness is None else MatchPeaks(c.planes * c.bands, c.dy, c.dx, peak_sharpness)
        self.frames = frames - 1
        self.output_dim = self.frames * (c.output_dim + (0 if self.peaks is None else self.peaks.output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        goal, b = images[:, -1], images.shape[0]
        parts = []
        for k in range(self.frames):
            bands = self.correlation.band_volumes(images[:, k], goal)  # (B, planes, bands, R, C)
            parts.append(bands.mean(2).reshape(b, -1))  # the whole plane's volume
            if self.peaks is not None:
                parts.append(self.peaks(bands.reshape(b, -1)))
        return torch.cat(parts, 1)


class CorrelationModel(ImageEncoderModel):
    """rsl-rl's `CNNModel` whose 2-D groups are read by `FrameCorrelations` (configured by
    correlation_cfg: pool, max_shift_rows, max_shift_columns and optionally bands of
    `ShiftCorrelation`, optionally peak_sharpness of `MatchPeaks`) instead of a CNN; the 1-D
    groups and the MLP head are CNNModel's. Chosen in an agent config by
    `class_name: policies.models.correlation:CorrelationModel`; other arguments: those of
    `CNNModel` (its cnn_cfg is not used)."""

    settings_key = "correlation_cfg"
    settings_expected = "pool, max_shift_rows, max_shift_columns (and optionally bands, peak_sharpness)"
    encoder = FrameCorrelations
