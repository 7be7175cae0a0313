"""Probe poses on the skin: a contact point, the skin normal and a rotation about the beam."""

from __future__ import annotations

import torch

from sim.transforms import matrix_to_quat


def probe_pose_on_skin(point: torch.Tensor, normal: torch.Tensor, yaw: torch.Tensor, press_m: float = 0.002) -> torch.Tensor:
    """Poses (N, 7) of a probe whose beam points into the body along -normal.

    point (N, 3) skin contact points and normal (N, 3) outward unit normals, patient frame
    (metres); yaw (N,) rotation about the beam in radians (0: image x along patient +x, for a
    transverse view on a prone patient's back); press_m pushes the face into the skin so the
    probe is coupled.
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
    rot = torch.stack([lateral, elevation, beam], dim=-1)  # columns: probe x, y, z in patient frame
    return torch.cat([point + beam * press_m, matrix_to_quat(rot)], dim=-1)
