"""Probe poses on the skin: from a contact point, the skin normal, a rotation about the beam and a
tilt; and the pose that images a vertebra's standard plane."""

from __future__ import annotations

import numpy as np
import torch

from sim.anatomy.patient import Patient
from sim.anatomy.surface import skin_point
from sim.errors import InputError
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp, rotation_log


def skin_rotation(normal: torch.Tensor, yaw: torch.Tensor, tilt: torch.Tensor | None = None) -> torch.Tensor:
    """Probe orientations (N, 3, 3), columns = probe x, y, z in the patient frame.

    normal (N, 3) outward skin normals; yaw (N,) rotation about the beam in radians (0: image x
    along patient +x, a transverse view on a prone patient's back); tilt (N, 2) optional rotation
    vector (radians) about the probe's own x then y axes, applied after the yaw (0: beam along
    -normal). Tilt about x rocks the beam out of the image plane, tilt about y within it.
    """
    beam = -normal / normal.norm(dim=-1, keepdim=True)
    ref = torch.zeros_like(beam)
    ref[:, 0] = 1.0
    lateral = ref - (ref * beam).sum(-1, keepdim=True) * beam
    lateral = lateral / lateral.norm(dim=-1, keepdim=True)
    cos, sin = yaw.cos()[:, None], yaw.sin()[:, None]
    # Rodrigues about the beam; `lateral` is perpendicular to it.
    lateral = lateral * cos + torch.cross(beam, lateral, dim=-1) * sin
    elevation = torch.cross(beam, lateral, dim=-1)
    rot = torch.stack([lateral, elevation, beam], dim=-1)
    if tilt is not None:
        rot = rot @ rotation_exp(torch.cat([tilt, torch.zeros_like(tilt[:, :1])], -1))
    return rot


def probe_pose_on_skin(
    point: torch.Tensor,
    normal: torch.Tensor,
    yaw: torch.Tensor,
    press_m: float = 0.002,
    tilt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poses (N, 7) of a probe face touching the skin at point (N, 3), patient frame, metres.

    Orientation from `skin_rotation(normal, yaw, tilt)`; press_m pushes the face centre that far
    into the skin along -normal, so the probe is coupled and the contact model sees the press.
    """
    unit = normal / normal.norm(dim=-1, keepdim=True)
    return torch.cat([point - unit * press_m, matrix_to_quat(skin_rotation(normal, yaw, tilt))], dim=-1)


def standard_plane_pose(patient: Patient, vertebra: str, view: str, press_m: float = 0.002) -> np.ndarray:
    """Probe pose (7,) imaging `view` of `vertebra` from the back skin, pressed `press_m` in.

    The probe frame takes the plane's axes (+x = u, +y = normal, +z = v, into the body); the
    face centre sits where the line from the plane origin back along -v meets the skin, then
    `press_m` metres deeper so the face is coupled. Needs `derive(patient)` (skin, landmarks).
    """
    if vertebra not in patient.landmarks or view not in patient.landmarks[vertebra].planes:
        known = {name: sorted(lm.planes) for name, lm in patient.landmarks.items()}
        raise InputError(f"standard plane {vertebra}/{view}: expected one of {known} (run derive(patient) first)")
    plane = patient.landmarks[vertebra].planes[view]
    face = plane.origin.copy()
    # Fixed point: the skin height barely changes over the millimetres the face moves sideways.
    for _ in range(5):
        skin, _ = skin_point(patient.skin, face[0], face[2])
        if not np.isfinite(skin).all():
            raise InputError(f"standard plane {vertebra}/{view}: no skin above {face.round(4).tolist()} m")
        face = plane.origin + (skin[1] - plane.origin[1]) / plane.v[1] * plane.v
    rotation = np.stack([plane.u, plane.normal, plane.v], axis=1)  # columns: probe x, y, z
    quat = matrix_to_quat(torch.from_numpy(rotation)).numpy()
    return np.concatenate([face + press_m * plane.v, quat])


def skin_state_from_pose(pose: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(yaw (N,), tilt (N, 2)) of probe poses (N, 7) over skin with outward normals (N, 3): the
    inverse of `skin_rotation` for the orientation (exact for untilted poses; a tilt is read as
    the rotation vector left after the yaw, whose z part is dropped)."""
    zero = torch.zeros(len(pose), dtype=pose.dtype, device=pose.device)
    rel = skin_rotation(normal, zero).transpose(-1, -2) @ quat_to_matrix(pose[:, 3:])
    yaw = torch.atan2(rel[:, 1, 0], rel[:, 0, 0])
    tilt = rotation_log(skin_rotation(normal, yaw).transpose(-1, -2) @ quat_to_matrix(pose[:, 3:]))[:, :2]
    return yaw, tilt
