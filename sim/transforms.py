"""Batched rigid transforms. Quaternions are (w, x, y, z); poses are (x, y, z, qw, qx, qy, qz)."""

from __future__ import annotations

import torch

from sim.errors import InputError


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in (w, x, y, z); normalises q."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(m: torch.Tensor) -> torch.Tensor:
    """Quaternions (..., 4) in (w, x, y, z) with w >= 0 from rotation matrices (..., 3, 3)."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Each candidate is 4*|component|^2; take the largest for numerical stability.
    cands = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = cands.argmax(-1, keepdim=True)
    c = cands.gather(-1, best)[..., 0].clamp_min(1e-12)  # 4 * largest component^2
    d = torch.stack(
        [
            torch.stack([c, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], c, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], c, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], c], -1),
        ],
        -2,
    )
    q = d.gather(-2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2) / c.sqrt()[..., None]
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)
    return q / q.norm(dim=-1, keepdim=True)


def rotation_log(rot: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors (..., 3), angle in [0, pi] radians, of rotation matrices (..., 3, 3)."""
    quat = matrix_to_quat(rot)  # w >= 0, so the angle is at most pi
    w, v = quat[..., :1], quat[..., 1:]
    norm = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, w)
    # angle / norm -> 2 / w as the rotation vanishes; avoid 0 / 0.
    scale = torch.where(norm > 1e-6, angle / norm.clamp_min(1e-12), 2 / w)
    return v * scale


def rotation_exp(vec: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of axis-angle vectors (..., 3) (Rodrigues; angle = norm, radians)."""
    angle = vec.norm(dim=-1, keepdim=True)[..., None]  # (..., 1, 1)
    k = vec / angle[..., 0].clamp_min(1e-12)
    zero = torch.zeros_like(k[..., 0])
    kx = torch.stack([zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0], -k[..., 1], k[..., 0], zero], -1)
    kx = kx.reshape(*k.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=vec.dtype, device=vec.device).expand_as(kx)
    return eye + angle.sin() * kx + (1 - angle.cos()) * (kx @ kx)


def rpy_to_matrix(rpy: torch.Tensor) -> torch.Tensor:
    """URDF roll-pitch-yaw (..., 3) in radians (about fixed x, then y, then z) to rotations
    (..., 3, 3) = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    (cr, cp, cy), (sr, sp, sy) = rpy.cos().unbind(-1), rpy.sin().unbind(-1)
    rows = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def pose_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """Homogeneous-free (..., 3, 4) [R | t] from poses (..., 7)."""
    return torch.cat([quat_to_matrix(pose[..., 3:]), pose[..., :3, None]], -1)


def check_poses(poses: torch.Tensor) -> None:
    """Raise `InputError` unless poses is (N, 7), finite, with non-zero quaternions."""
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise InputError(f"poses: expected shape (N, 7) (position xyz, quaternion wxyz), got {tuple(poses.shape)}")
    if not torch.isfinite(poses).all():
        raise InputError("poses: expected finite values, got NaN or infinity")
    if (poses[:, 3:].norm(dim=-1) < 1e-6).any():
        raise InputError("poses: expected non-zero quaternions (w, x, y, z)")


def clamp_norm(v: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Vectors (..., D) scaled down to at most `max_norm` long (shorter ones unchanged)."""
    return v * (max_norm / v.norm(dim=-1, keepdim=True).clamp_min(max_norm))
