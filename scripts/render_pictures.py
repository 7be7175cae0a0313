"""Pictures of the default phantom: B-mode images at L3 and a 3-D view of the probe on the back.

    python scripts/render_pictures.py [--out docs/images] [--seed 0] [--spacing-mm 1.0]

Writes into --out:
    us_linear_transverse_L3.png     linear probe, transverse view of L3
    us_convex_transverse_L3.png     convex probe, same view
    us_linear_parasagittal_L3.png   linear probe along the spine through L3's left lamina
    scene_3d.png                    body, bones, the linear probe and its image (pyvista, off screen)
    realism_side_by_side.png        the realism reference image (a real 5 MHz convex scan) beside the
                                    phantom imaged as it was (sim.ultrasound.reference_view); only
                                    when pydicom-data, which holds the reference, is installed
Prints each file with its size and the time taken. Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyvista as pv
import torch
from PIL import Image, ImageDraw

from sim.anatomy.bank import PatientBank
from sim.anatomy.derive import derive
from sim.anatomy.phantom import make_phantom
from sim.errors import InputError
from sim.ultrasound import realism, reference_view
from sim.ultrasound.placement import standard_plane_pose
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer
from sim.viz.scene import build_scene

VERTEBRA = "vertebrae_L3"
# (file stem, probe preset, standard plane)
VIEWS = (
    ("us_linear_transverse_L3", "linear", "transverse"),
    ("us_convex_transverse_L3", "convex", "transverse"),
    ("us_linear_parasagittal_L3", "linear", "parasagittal_left"),
)
SCENE_SIZE = (800, 600)
SCENE_COLOURS = 256  # palette PNG keeps the 3-D view small


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"), help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="phantom seed")
    ap.add_argument("--spacing-mm", type=float, default=1.0, help="phantom voxel size in mm")
    return ap.parse_args(argv)


def render_view(bank: PatientBank, preset: str, view: str) -> tuple[ProbeSpec, np.ndarray, np.ndarray]:
    """(probe, pose (7,), image (H, W) in [0, 1]) of one standard view of the bank's patient 0."""
    probe = ProbeSpec.preset(preset)
    pose = standard_plane_pose(bank.patients[0], VERTEBRA, view)
    image = Renderer(bank, probe).render(
        torch.tensor(pose[None], dtype=torch.float32), torch.zeros(1, dtype=torch.long)
    )
    return probe, pose, image[0].cpu().numpy()


def render_scene(bank: PatientBank, probe: ProbeSpec, pose: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(600, 800, 3) uint8 off-screen 3-D view looking at the probe from the back, right and above."""
    plotter = pv.Plotter(off_screen=True, window_size=SCENE_SIZE)
    plotter.set_background("white")
    build_scene(plotter, bank.patients[0], pose[None], image[None], probe)
    focus = pose[:3] + 0.03 * np.array([0.0, 1.0, 0.0])  # a little inside the body, by the image
    plotter.camera.focal_point = focus
    # From the patient's right, above the back and a little superior: the transverse image faces
    # the camera at an angle, and the vertebrae above L3 stay out of its line of sight.
    plotter.camera.position = focus + 0.36 * np.array([0.35, -0.78, 0.52])
    plotter.camera.up = (0.0, -1.0, 0.0)  # prone: the back faces up
    shot = plotter.screenshot(return_img=True)
    plotter.close()
    return shot


def side_by_side(patient) -> np.ndarray:
    """(H, W) uint8: the realism reference image beside the phantom imaged as it was, both at the
    reference's pixel size, top-aligned at the probe face and labelled."""
    ref = realism.load_reference()
    view = reference_view.render_reference_view(patient)
    real = ref.gray[max(0, round(ref.depth0_row)) :]
    simulated = view.image[max(0, round(view.depth0_row)) :]
    height = max(len(real), len(simulated))
    pad = lambda a: np.pad(a, ((0, height - len(a)), (0, 0)))  # noqa: E731
    gap = np.zeros((height, 12))
    pixels = np.concatenate([pad(real), gap, pad(simulated)], axis=1).clip(0, 255).round().astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    draw.text((8, height - 16), "real: ALOKA SSD-4000, 5 MHz convex", fill=255)
    draw.text((real.shape[1] + 20, height - 16), "sonolab: phantom, convex_reference preset", fill=255)
    return np.asarray(img)


def save_png(path: Path, pixels: np.ndarray, colours: int | None = None) -> None:
    """Write uint8 pixels (H, W) or (H, W, 3); `colours` quantises to a palette to keep files small."""
    img = Image.fromarray(pixels)
    if colours:
        img = img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    pv.OFF_SCREEN = True
    try:
        patient = derive(make_phantom(args.seed, args.spacing_mm))
        bank = PatientBank([patient])
        views = {stem: render_view(bank, preset, view) for stem, preset, view in VIEWS}
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (_, _, image) in views.items():
        written.append(args.out / f"{stem}.png")
        save_png(written[-1], (image * 255).round().astype(np.uint8))
    written.append(args.out / "scene_3d.png")
    save_png(written[-1], render_scene(bank, *views["us_linear_transverse_L3"]), SCENE_COLOURS)
    if realism.reference_available():
        written.append(args.out / "realism_side_by_side.png")
        save_png(written[-1], side_by_side(patient))
    for path in written:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
