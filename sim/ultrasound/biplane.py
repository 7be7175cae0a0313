"""Biplane imaging: the probe's image plane and the plane at right angles to it through the beam.

A matrix-array probe (xPlane on Philips' X-series, biplane on GE's 4D probes) images two planes at
once, shown side by side: the primary plane (the probe's lateral axis across the image) and the
plane turned 90 degrees about the beam (the elevation axis across the image). What lies out of
the primary plane, where the probe must move across its plane, lies in the secondary one.

Images of the two planes are rendered as one batch (the planes of all N environments: 2N poses)
with one set of imaging parameters per acquisition, so both planes share gain, frequency, tissue
and speckle realisation, as the two planes of one probe do.
"""

from __future__ import annotations

import math

import torch

from sim.errors import require
from sim.ultrasound.renderer import RenderParams

PLANE_COUNTS = (1, 2)  # the image plane only, or biplane

_HALF = math.sqrt(0.5)


def turned_about_beam(poses: torch.Tensor) -> torch.Tensor:
    """Poses (N, 7) turned +90 degrees about their own z axis (the beam): image x along the
    probe's elevation axis y, image y along its -x; positions unchanged."""
    w, x, y, z = poses[:, 3:].unbind(-1)
    # q (x) (cos 45, 0, 0, sin 45): the rotation applied in the probe's own frame.
    quat = torch.stack([w - z, x + y, y - x, z + w], -1) * _HALF
    return torch.cat([poses[:, :3], quat], -1)


def plane_poses(poses: torch.Tensor, planes: int) -> torch.Tensor:
    """(planes * N, 7): the N probe poses (N, 7) of the primary plane, then (planes == 2) the N
    of the secondary plane."""
    require(planes in PLANE_COUNTS, "imaging planes", f"one of {PLANE_COUNTS}", planes)
    return poses if planes == 1 else torch.cat([poses, turned_about_beam(poses)])


def plane_params(params: RenderParams | None, planes: int) -> RenderParams | None:
    """Imaging parameters of N acquisitions repeated for each of their planes (planes * N rows, in
    `plane_poses`' order); None stays None (the renderer's nominal parameters)."""
    if params is None or planes == 1:
        return params

    def repeat(value: torch.Tensor | None) -> torch.Tensor | None:
        return None if value is None else torch.cat([value] * planes)

    return RenderParams(
        gain_db=repeat(params.gain_db),
        dynamic_range_db=repeat(params.dynamic_range_db),
        frequency_mhz=repeat(params.frequency_mhz),
        tissue=repeat(params.tissue),
        speckle_offset=repeat(params.speckle_offset),
    )


def side_by_side(images: torch.Tensor, planes: int) -> torch.Tensor:
    """(N, H, planes * W): images (planes * N, H, W) in `plane_poses`' order, each acquisition's
    planes placed left to right, as a biplane display shows them."""
    n = images.shape[0] // planes
    return images.reshape(planes, n, *images.shape[1:]).permute(1, 2, 0, 3).flatten(2)
