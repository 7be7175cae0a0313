"""The default phantom imaged as the realism reference image was: the `convex_reference` probe
preset (5 MHz convex, 15 cm deep, the reference's 0.383 mm pixels) at the reference scanner's
display settings, on the flank. `benchmark.py realism` measures it; `render_pictures.py` shows it
beside the reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sim.anatomy.bank import PatientBank
from sim.anatomy.patient import Patient
from sim.anatomy.surface import skin_point
from sim.ultrasound.placement import probe_pose_on_skin
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig

PRESET = "convex_reference"
# The reference scanner's display settings: they give its soft-tissue mean and local contrast.
DISPLAY = {"gain_db": -35.0, "dynamic_range_db": 90.0}


@dataclass(frozen=True)
class SimulatedView:
    """image (H, W) 0..255; valid (H, W) pixels inside the sector; depth0_row: the face's row;
    pixel_mm: square pixel size; probe: the preset it was rendered with."""

    image: np.ndarray
    valid: np.ndarray
    depth0_row: float
    pixel_mm: float
    probe: ProbeSpec


def flank_pose(patient: Patient) -> torch.Tensor:
    """(1, 7) a sagittal probe pose on the flank, 9 cm to the left of the spine and 4 cm below the
    middle of the lumbar spine, a 2 mm press: the beam passes the back muscles into the soft
    tissue of the retroperitoneum, deep homogeneous tissue like the reference's abdomen."""
    centres = np.stack([lm.centre for lm in patient.landmarks.values()])
    point, normal = skin_point(patient.skin, centres[:, 0].mean() - 0.09, centres[:, 2].mean() - 0.04)
    t = lambda a: torch.as_tensor(np.atleast_2d(a), dtype=torch.float32)  # noqa: E731
    return probe_pose_on_skin(t(point), t(normal), torch.tensor([math.pi / 2]))


def render_reference_view(patient: Patient) -> SimulatedView:
    """`patient` (a phantom with landmarks and skin) rendered from `flank_pose` by `PRESET` at `DISPLAY`."""
    probe = ProbeSpec.preset(PRESET)
    renderer = Renderer(PatientBank([patient], device="cpu"), probe, config=RendererConfig(**DISPLAY))
    image = 255 * renderer.render(flank_pose(patient), torch.zeros(1, dtype=torch.long))[0].numpy()
    z = probe.pixel_positions()[:, 0, 1].numpy()
    return SimulatedView(
        image=image,
        valid=probe.scan_coordinates()[1].numpy(),
        depth0_row=float(np.interp(0.0, z, np.arange(len(z)))),
        pixel_mm=1000 * probe.pixel_spacing_m()[0],
        probe=probe,
    )
