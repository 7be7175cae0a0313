"""Surgical tools in the ultrasound image: where each scan line meets a straight metal shaft.

A tool is a capsule: the points within `radius_m` of the segment from `start` to `end` (a
cylinder with rounded ends; the rounded tip of a drill bit). The imaged slab is the probe's
elevation thickness around its image plane: |y| <= elevation_m / 2 in the probe frame. Each
scan line, with the slab, spans a strip in the plane through the line and the elevation axis;
the line sees the tool at the smallest depth along the line of any point of the tool inside
that strip (the front of the shaft within the slab). A shaft outside the slab is never hit, and
one crossing the slab obliquely is hit only by the lines that pass its crossing.

The depth is found in closed form (no sampling, so it moves smoothly with the tool): the strip
meets the infinite cylinder around the shaft's axis in an ellipse in (depth, elevation), whose
point of least depth within |y| <= h is found by clamping the ellipse's own minimiser into the
slab (the ellipse's front edge is convex in y); the point counts if it lies between the shaft's
ends. The rounded ends are two spheres, each cut by the strip's plane in a disc. The capsule's
least depth is the least of the three, which holds because the capsule is convex.

The renderer turns the depth into a specular reflector and a shadow (`stages.tool_echo_db`).
Units: metres. Shapes: N environments, L scan lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sim.errors import require, require_number
from sim.transforms import pose_to_matrix

STEEL_MRAYL = 45.0  # stainless steel: 7.9 g/cm^3 x 5,700 m/s longitudinal
SOFT_TISSUE_MRAYL = 1.63  # what surrounds the shaft (REFERENCE.md, generic soft tissue)
# Amplitude reflection at the shaft's front wall, 0.93 (R = 0.87: metal reflects nearly all).
TOOL_REFLECTION = (STEEL_MRAYL - SOFT_TISSUE_MRAYL) / (STEEL_MRAYL + SOFT_TISSUE_MRAYL)
# Round-trip amplitude behind the shaft, in nepers: (1 - R) at the front wall and again at the
# back wall, ln(0.018) = -35 dB (bone's single wall loses 4 dB and its attenuation the rest).
TOOL_LOG_TRANSMISSION = 2.0 * math.log(1.0 - TOOL_REFLECTION**2)

_EPS = 1e-12  # squared lengths (m^2 or unitless) below this count as zero


@dataclass(frozen=True)
class ToolSegments:
    """One straight metal shaft per environment, in the patient frame (metres).

    start, end: (N, 3) ends of the shaft's axis (e.g. the drill's chuck end and its tip; the
    order does not matter to the image). radius_m: the shaft's radius, a number > 0 for all
    environments or an (N,) tensor, one per environment.
    """

    start: torch.Tensor
    end: torch.Tensor
    radius_m: float | torch.Tensor

    def check(self, n: int) -> None:
        """InputError naming the first field that is not finite, of its shape, or (radius) > 0."""
        for name in ("start", "end"):
            value = getattr(self, name)
            require(
                isinstance(value, torch.Tensor) and value.shape == (n, 3) and value.is_floating_point(),
                f"tools.{name}",
                f"a float tensor of shape {(n, 3)} (metres, patient frame)",
                f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__,
            )
            require(bool(torch.isfinite(value).all()), f"tools.{name}", "finite values", "NaN or infinity")
        radius = self.radius_m
        if isinstance(radius, torch.Tensor):
            require(
                radius.shape in ((), (n,)) and radius.is_floating_point(),
                "tools.radius_m",
                f"a number or a float tensor of shape {(n,)} (metres)",
                f"{radius.dtype} {tuple(radius.shape)}",
            )
            ok = bool((torch.isfinite(radius) & (radius > 0)).all())
            require(ok, "tools.radius_m", "finite values > 0 m", radius.min().item() if radius.numel() else radius)
        else:
            require_number(radius, "tools.radius_m", 0.0, low_open=True)

    def tensors(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """start (N, 3), end (N, 3) and radius (N,) as float32 on `device` (no host synchronisation)."""
        start = self.start.to(device, torch.float32)
        end = self.end.to(device, torch.float32)
        if isinstance(self.radius_m, torch.Tensor):
            radius = self.radius_m.to(device, torch.float32).expand(n).contiguous()  # one compiled layout
        else:
            radius = torch.full((n,), float(self.radius_m), device=device)
        return start, end, radius


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last axis (3), broadcast over the others."""
    return (a * b).sum(-1)


def _sphere_depth(
    centre: torch.Tensor, radius: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor, half_m: float
) -> torch.Tensor:
    """Least depth (N, L) along each line of a sphere inside the line's strip; inf where it misses.

    centre (N, 1, 3) and radius (N, 1) in the probe frame; origins, dirs (L, 3) in the image
    plane (y = 0); half_m the slab's half thickness."""
    q = centre - origins  # (N, L, 3)
    along, beside = _dot(q, dirs), q[..., 1]
    off_plane_sq = (_dot(q, q) - along * along - beside * beside).clamp_min(0)
    y = beside.clamp(-half_m, half_m)  # the slab's elevation nearest the centre
    chord_sq = radius * radius - off_plane_sq - (y - beside) ** 2
    return torch.where(chord_sq >= 0, along - chord_sq.clamp_min(0).sqrt(), torch.inf)


def shaft_depth(
    poses: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    radius: torch.Tensor,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    half_thickness_m: float,
    depth_m: float,
) -> torch.Tensor:
    """Depth (N, L) in metres along each scan line where it meets the shaft within the slab.

    poses (N, 7) probe poses in the patient frame; start, end (N, 3) shaft axis ends in the
    patient frame; radius (N,); origins, dirs (L, 3) the scan lines in the probe frame (unit
    directions in the image plane); half_thickness_m: half the elevation thickness.
    inf where a line does not meet the shaft within [0, depth_m] (a line whose start is already
    inside the shaft, the tool against the face, counts as not meeting it). Products are summed
    elementwise (no batched matmul), so an environment's result does not depend on the batch.
    """
    probe = pose_to_matrix(poses)  # (N, 3, 4) probe -> patient
    rot, pos = probe[:, :, :3], probe[:, :, 3]

    def to_probe(p: torch.Tensor) -> torch.Tensor:  # (N, 3) patient -> (N, 1, 3) probe frame: R^T (p - t)
        return (rot * (p - pos)[:, :, None]).sum(1)[:, None]

    a, b = to_probe(start), to_probe(end)
    r = radius[:, None]  # (N, 1)
    h = half_thickness_m
    axis = b - a
    length = _dot(axis, axis).clamp_min(_EPS).sqrt()  # (N, 1)
    u = axis / length[..., None]  # unit axis; zero for a zero-length shaft (then a sphere)

    def across(v: torch.Tensor) -> torch.Tensor:  # the part of v perpendicular to the axis
        return v - _dot(v, u)[..., None] * u

    w = origins - a  # (N, L, 3) line origins relative to the shaft's start
    w_p, d_p = across(w), across(dirs.expand_as(w))
    unit_y = torch.eye(3, dtype=w.dtype, device=w.device)[1]  # made on the device: no host-to-device copy
    e_p = across(unit_y.expand_as(u))  # (N, 1, 3) the elevation axis, across the shaft
    # Inside the infinite cylinder: |w_p + t d_p + y e_p|^2 <= r^2, an ellipse in (t, y).
    # Its least t lies where the derivative in y vanishes: y* = -(e_p.(w_p + t d_p)) / |e_p|^2;
    # taking e_p out of w_p and d_p leaves a quadratic in t alone. A shaft along the elevation
    # axis has e_p = 0: every y is alike, and y* = 0 is as good as any.
    ee = _dot(e_p, e_p)
    inv_ee = torch.where(ee > _EPS, 1.0 / ee.clamp_min(_EPS), 0.0)
    ew, ed = _dot(e_p, w_p), _dot(e_p, d_p)
    w_q = w_p - (ew * inv_ee)[..., None] * e_p
    d_q = d_p - (ed * inv_ee)[..., None] * e_p
    qa, qb, qc = _dot(d_q, d_q).clamp_min(_EPS), _dot(w_q, d_q), _dot(w_q, w_q) - r * r
    t_free = (-qb - (qb * qb - qa * qc).clamp_min(0).sqrt()) / qa
    # Clamp y* into the slab and find the front of the cylinder along the line at that elevation.
    y = (-(ew + t_free * ed) * inv_ee).clamp(-h, h)
    w_y = w_p + y[..., None] * e_p
    ca, cb, cc = _dot(d_p, d_p), _dot(w_y, d_p), _dot(w_y, w_y) - r * r
    disc = cb * cb - ca * cc
    t_cyl = (-cb - disc.clamp_min(0).sqrt()) / ca.clamp_min(_EPS)
    # That point counts if it lies between the ends (beyond them the spheres take over) and the
    # line is not parallel to the axis (then it meets only the ends).
    along = (_dot(w, u) + t_cyl * _dot(dirs, u) + y * u[..., 1]) / length
    hit = (disc >= 0) & (ca > _EPS) & (along >= 0) & (along <= 1)
    depth = torch.where(hit, t_cyl, torch.inf)
    depth = torch.minimum(depth, _sphere_depth(a, r, origins, dirs, h))
    depth = torch.minimum(depth, _sphere_depth(b, r, origins, dirs, h))
    return torch.where((depth >= 0) & (depth <= depth_m), depth, torch.inf)
