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

    bands: `volumes` splits the goal's rows into this many depth bands of equal height and
    matches each band alone; the plane's volume is their mean. A probe rocked in the image plane
    by theta sees the anatomy at depth d moved across by d tan(theta): the deep band's match
    peaks at another column shift than the shallow band's, where one volume over the whole
    plane shows a single, blurred peak (5 deg over 40 mm of depth: 3.5 mm, a cell of 4 px).

    rocks, rock_step_deg: `volumes` also matches the goal turned by k * rock_step_deg about the
    middle of its top row (the probe face), for k = -rocks ... rocks: how the newest image would
    look from the goal's probe rocked by that angle in the image plane. The match is highest at
    the angle the probe is rocked by, whether the anatomy runs across the image (a bone surface:
    its depth changes across the image) or down it (bands see only the latter). Angles are in the
    grid of cells (square; for a probe whose pixels are not, a slightly sheared rock). Cells the
    turned goal does not cover count as no match: each entry is the mean over the covered ones.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        pool: int,
        max_shift_rows: int,
        max_shift_columns: int,
        bands: int = 1,
        rocks: int = 0,
        rock_step_deg: float = 4.0,
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
        if not (isinstance(rocks, int) and not isinstance(rocks, bool) and rocks >= 0):
            raise InputError(f"shift correlation rocks: expected a whole number >= 0 (angles each side), got {rocks!r}")
        if not (isinstance(rock_step_deg, (int, float)) and 0 < rock_step_deg and rocks * rock_step_deg <= 45):
            raise InputError(
                "shift correlation rock_step_deg: expected degrees > 0 with rocks * rock_step_deg <= 45, "
                f"got {rock_step_deg!r} (rocks {rocks})"
            )
        self.bands, self.angles = bands, 2 * rocks + 1  # how many rock angles (rocks each side and 0)
        self.dy, self.dx = max_shift_rows, max_shift_columns
        self.output_dim = self.planes * (2 * self.dy + 1) * (2 * self.dx + 1)
        rows = torch.arange(self.cells) // (self.cells // bands)
        # (bands, cells): which rows of cells each band holds
        band_rows = (rows[None, :] == torch.arange(bands)[:, None]).float()
        self.register_buffer("band_rows", band_rows[:, :, None], persistent=False)
        angles = torch.arange(-rocks, rocks + 1, dtype=torch.float32) * math.radians(rock_step_deg)
        self.register_buffer("rock_grids", rock_grids(angles, self.cells), persistent=False)
        # (rocks, bands): the cells of each band the turned goal covers (the divisor of its matches)
        ones = torch.ones(self.angles, 1, self.cells, self.cells)
        covered = F.grid_sample(ones, self.rock_grids, align_corners=False) * band_rows[:, :, None]
        self.register_buffer("covered", covered.sum((-2, -1)).clamp_min(1.0), persistent=False)

    def cells_of(self, images: torch.Tensor) -> torch.Tensor:
        """(..., planes, cells, cells) pooled, normalised planes of images (..., H, planes * H).

        Pooled before the planes are split: a cell never straddles two planes (H divides by the
        pool), and splitting the pooled cells instead of the pixels copies pool^2 times less."""
        h, w = images.shape[-2:]
        pooled = F.avg_pool2d(images.reshape(-1, 1, h, w), self.pool)
        planes = pooled.reshape(*images.shape[:-2], self.cells, self.planes, self.cells).movedim(-2, -3)
        mean = planes.mean((-2, -1), keepdim=True)
        std = planes.std((-2, -1), keepdim=True).clamp_min(1e-3)  # a blank image stays zero, not NaN
        return (planes - mean) / std

    def volumes(self, frames: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(B, F, planes, rocks, bands, 2 dy + 1, 2 dx + 1) of F frames (B, F, H, planes * H)
        against the goal image (B, H, planes * H): `match_cells` of their `cells_of`."""
        return self.match_cells(self.cells_of(frames), self.cells_of(goal))

    def match_cells(self, frames: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(B, F, planes, rocks, bands, 2 dy + 1, 2 dx + 1): each depth band of the goal's cells
        (B, planes, cells, cells), turned by each rock angle (the middle one: 0), matched alone
        (mean product over the cells of the band it covers) against each frame's cells (B, F,
        planes, cells, cells) at every shift. The goal's spectrum is computed once for all frames."""
        b, c = goal.shape[0], self.cells
        if self.angles > 1:  # (B, planes, rocks, cells, cells): the goal seen from rocked probes
            n = b * self.planes
            grids = self.rock_grids.repeat(n, 1, 1, 1)
            each = goal.reshape(n, 1, c, c).repeat_interleave(self.angles, 0)
            turned = F.grid_sample(each, grids, align_corners=False)
            goal = turned.reshape(b, self.planes, self.angles, c, c)
        else:
            goal = goal[:, :, None]
        padded = F.pad(frames, (self.dx, self.dx, self.dy, self.dy))  # zero outside the image
        size = padded.shape[-2:]
        # Every shift at once as a cross-correlation by FFT: the goal, zero-padded to the padded
        # size, never wraps onto the shifts kept (7 times faster than shifted windows on the CPU).
        # Each band is the goal with its other rows zeroed; the frame, rock and band axes are added
        # on the real side, before the FFT (ONNX has no unsqueeze of a complex tensor).
        bands = goal[:, None, :, :, None] * self.band_rows  # (B, 1, planes, rocks, bands, cells, cells)
        spectrum = torch.fft.rfft2(padded[:, :, :, None, None], s=size) * torch.fft.rfft2(bands, s=size).conj()
        match = torch.fft.irfft2(spectrum, s=size)[..., : 2 * self.dy + 1, : 2 * self.dx + 1]
        return match / self.covered[:, :, None, None]

    def forward(self, newest: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """(B, output_dim): each plane's unturned volume over its whole depth (the bands' mean)."""
        return self.whole_planes(self.volumes(newest[:, None], goal)[:, 0])

    def whole_planes(self, volumes: torch.Tensor) -> torch.Tensor:
        """(B, output_dim): the unturned goal's volume per plane over all bands, of one frame's
        volumes (B, planes, rocks, bands, R, C) from `volumes`."""
        return volumes[:, :, self.angles // 2].mean(2).reshape(volumes.shape[0], self.output_dim)


def rock_grids(angles_rad: torch.Tensor, cells: int) -> torch.Tensor:
    """(K, cells, cells, 2) `grid_sample` grids (align_corners=False) that turn a cells x cells
    map by each of angles_rad (K,) about the middle of its top edge: output cell at (x across
    from the middle, d down from the top edge) reads the map at (x cos + d sin, -x sin + d cos)."""
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) - cells / 2
    d, x = torch.meshgrid(centres + cells / 2, centres, indexing="ij")  # cells from the top edge, from the middle
    c, s = angles_rad.cos()[:, None, None], angles_rad.sin()[:, None, None]
    src_x, src_d = c * x + s * d, -s * x + c * d
    return torch.stack([src_x / (cells / 2), src_d / (cells / 2) - 1.0], -1)


class MatchPeaks(nn.Module):
    """(B, planes * R * C) cost volumes (R = 2 dy + 1 rows, C = 2 dx + 1 columns of shifts per
    volume; `planes` volumes: one per plane, or per plane, rock angle and depth band of
    `ShiftCorrelation.volumes`) -> (B, planes * 3): per volume the shift where the match
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
    high), per plane, rock angle and depth band (correlation_cfg rocks, bands: how the peak's
    height changes with the angle, and the bands' peaks, tell how the probe is rocked in each
    plane; the volume is the whole plane's, unturned). No weights: what the policy learns
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
        volumes = c.planes * c.angles * c.bands
        self.peaks = None if peak_sharpness is None else MatchPeaks(volumes, c.dy, c.dx, peak_sharpness)
        self.frames = frames - 1
        self.output_dim = self.frames * (c.output_dim + (0 if self.peaks is None else self.peaks.output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = self.correlation.cells_of(images)  # (B, F + 1, planes, cells, cells), pooled once
        volumes = self.correlation.match_cells(cells[:, :-1], cells[:, -1])  # (B, F, planes, rocks, bands, R, C)
        parts = []
        for k in range(self.frames):
            parts.append(self.correlation.whole_planes(volumes[:, k]))
            if self.peaks is not None:
                parts.append(self.peaks(volumes[:, k].flatten(1)))
        return torch.cat(parts, 1)


class CorrelationModel(ImageEncoderModel):
    """rsl-rl's `CNNModel` whose 2-D groups are read by `FrameCorrelations` (configured by
    correlation_cfg: pool, max_shift_rows, max_shift_columns and optionally bands, rocks and
    rock_step_deg of `ShiftCorrelation`, optionally peak_sharpness of `MatchPeaks`) instead of a CNN; the 1-D
    groups and the MLP head are CNNModel's. Chosen in an agent config by
    `class_name: policies.models.correlation:CorrelationModel`; other arguments: those of
    `CNNModel` (its cnn_cfg is not used)."""

    settings_key = "correlation_cfg"
    settings_expected = (
        "pool, max_shift_rows, max_shift_columns (and optionally bands, rocks, rock_step_deg, peak_sharpness)"
    )
    encoder = FrameCorrelations
