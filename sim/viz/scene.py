"""3-D scenes of a patient, probes and their ultrasound images, with pyvista (VTK).

`build_scene` fills any pyvista plotter (off-screen for pictures, interactive for a viewer):
the translucent body, the bone meshes, a box per probe pose and each ultrasound image as a
textured quad in its image plane, all in the patient frame (metres).
"""

from __future__ import annotations

import numpy as np
import pyvista as pv
import torch
from scipy.ndimage import binary_erosion

from sim.anatomy.patient import Patient
from sim.errors import InputError
from sim.transforms import pose_to_matrix
from sim.ultrasound.probe import ProbeSpec

BODY_COLOUR, BODY_OPACITY = "peachpuff", 0.18
BONE_COLOUR, BONE_OPACITY = "ivory", 0.6  # see-through enough to show images behind bone
PROBE_COLOUR = "dimgray"
HOUSING_DEPTH_M, HOUSING_THICKNESS_M = 0.06, 0.012  # probe box behind the face, and across the slice


def pose_matrix(pose: np.ndarray | torch.Tensor) -> np.ndarray:
    """(4, 4) float64 homogeneous transform of one pose (7,) (metres, quaternion w, x, y, z)."""
    m = np.eye(4)
    m[:3] = pose_to_matrix(torch.as_tensor(pose, dtype=torch.float64).cpu()).numpy()
    return m


def _to_patient(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Probe-frame points (P, 3) to the patient frame, for one pose (7,)."""
    m = pose_matrix(pose)
    return points @ m[:3, :3].T + m[:3, 3]


def probe_housing(probe: ProbeSpec, pose: np.ndarray) -> pv.PolyData:
    """A box for the probe's body: as wide as its face, behind the face (-z), at `pose` (7,)."""
    if probe.kind == "linear":
        half_width, face_z = probe.width_m / 2, 0.0
    else:
        half = np.radians(probe.fov_deg) / 2
        r = max(probe.apex_radius_m, 0.005)  # phased: a small face around the apex
        half_width, face_z = r * np.sin(half), probe.image_extent()[2]
    half_thickness = HOUSING_THICKNESS_M / 2
    box = pv.Box(
        (-half_width, half_width, -half_thickness, half_thickness, face_z - HOUSING_DEPTH_M, face_z)
    ).triangulate()
    box.points = _to_patient(pose, np.asarray(box.points))
    return box


def image_plane(probe: ProbeSpec, pose: np.ndarray) -> pv.PolyData:
    """The image's rectangle in its plane (probe y = 0) at `pose` (7,), with texture coordinates
    for `image_texture`: row 0 on the face side, column 0 at probe -x."""
    x0, x1, z0, z1 = probe.image_extent()
    corners = np.array([[x0, 0, z0], [x1, 0, z0], [x1, 0, z1], [x0, 0, z1]], float)
    quad = pv.PolyData(_to_patient(pose, corners), faces=[4, 0, 1, 2, 3])
    # pyvista textures put array row 0 at the top (t = 1).
    quad.active_texture_coordinates = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)
    return quad


def image_texture(probe: ProbeSpec, image: np.ndarray) -> pv.Texture:
    """Grey RGBA texture of an image (H, W) in [0, 1]; pixels outside the field of view (sector
    images) are transparent."""
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    _, inside = probe.scan_coordinates()
    alpha = np.where(inside.numpy(), 255, 0).astype(np.uint8)
    return pv.Texture(np.stack([grey, grey, grey, alpha], axis=-1))


def plane_texture(probe: ProbeSpec, rgb: tuple[int, int, int], fill_alpha: int = 100, border_px: int = 5) -> pv.Texture:
    """A flat-coloured RGBA texture of the field of view for `image_plane`: translucent inside
    (alpha `fill_alpha` of 255) with an opaque border `border_px` pixels wide (a goal plane)."""
    _, inside = probe.scan_coordinates()
    inside = inside.numpy()
    border = inside & ~binary_erosion(inside, iterations=border_px, border_value=0)
    alpha = np.where(border, 255, np.where(inside, fill_alpha, 0)).astype(np.uint8)
    colour = np.broadcast_to(np.array(rgb, np.uint8), (*inside.shape, 3))
    return pv.Texture(np.concatenate([colour, alpha[..., None]], -1))


def add_patient(plotter: pv.Plotter, patient: Patient) -> list[pv.Actor]:
    """The translucent body and see-through bones from `patient.meshes` (see `derive`); returns
    their actors."""
    if "body" not in patient.meshes:
        raise InputError(
            f"patient '{patient.name}' meshes: expected 'body' and bone meshes (run derive(patient, meshes=True))"
        )
    actors = [
        plotter.add_mesh(pv.wrap(patient.meshes["body"]), color=BODY_COLOUR, opacity=BODY_OPACITY, smooth_shading=True)
    ]
    for name, mesh in patient.meshes.items():
        if name != "body":
            actors.append(
                plotter.add_mesh(
                    pv.wrap(mesh), color=BONE_COLOUR, opacity=BONE_OPACITY, smooth_shading=True, specular=0.3
                )
            )
    return actors


def build_scene(plotter: pv.Plotter, patient: Patient, poses: np.ndarray, images: np.ndarray, probe: ProbeSpec) -> None:
    """Patient, probes and images in the patient frame.

    poses (M, 7) probe poses (metres, quaternion w, x, y, z); images (M, H, W) in [0, 1] from
    `probe` at those poses (torch tensors are accepted too).
    """
    poses, images = np.asarray(poses, float), np.asarray(images, np.float32)
    if poses.ndim != 2 or poses.shape[1] != 7 or images.shape != (len(poses), probe.image_height, probe.image_width):
        raise InputError(
            f"build_scene: expected poses (M, 7) and images (M, {probe.image_height}, {probe.image_width}), "
            f"got {poses.shape} and {images.shape}"
        )
    add_patient(plotter, patient)
    for pose, image in zip(poses, images):
        plotter.add_mesh(probe_housing(probe, pose), color=PROBE_COLOUR)
        plotter.add_mesh(image_plane(probe, pose), texture=image_texture(probe, image), lighting=False)
