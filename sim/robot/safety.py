"""Safety limits the runtime enforces on every probe target and every robot state.

Targets are clamped: into the workspace box, and to the maximum linear and angular speed from the
previous target. The robot is stopped when its measured state breaks a limit: contact force above
the maximum, the probe outside the box by more than the stop margin, measured speed beyond the
stop speed, or anything non-finite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

import numpy as np
import torch

from sim.errors import InputError
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp, rotation_log


@dataclass
class SafetyLimits:
    """workspace_low_m / workspace_high_m (3,): the probe's box around the anchor point (anchor
    frame, metres). max_speed_m_s / max_angular_speed_rad_s: the fastest a target may move.
    stop_speed_m_s: measured probe speed that stops the robot. max_force_n: contact force that
    stops the robot. stop_margin_m: how far outside the box the measured probe may be."""

    workspace_low_m: tuple[float, float, float]
    workspace_high_m: tuple[float, float, float]
    max_speed_m_s: float
    max_angular_speed_rad_s: float
    stop_speed_m_s: float
    max_force_n: float
    stop_margin_m: float = 0.01

    @classmethod
    def from_dict(cls, values: Mapping) -> "SafetyLimits":
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(n for n in names if n not in values and n != "stop_margin_m")
        if unknown or missing:
            raise InputError(f"safety limits: unknown keys {unknown}, missing keys {missing}; expected {sorted(names)}")
        limits = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        if not all(lo < hi for lo, hi in zip(limits.workspace_low_m, limits.workspace_high_m)):
            raise InputError(f"safety limits: expected workspace_low_m < workspace_high_m, got {limits.workspace_low_m} and {limits.workspace_high_m}")
        return limits

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class SafetyMonitor:
    """Applies `SafetyLimits` for one robot at control period dt_s around anchor (3,)."""

    def __init__(self, limits: SafetyLimits, anchor_m: np.ndarray, dt_s: float) -> None:
        self.limits, self.dt = limits, dt_s
        anchor = np.asarray(anchor_m, np.float64)
        self.low = anchor + np.asarray(limits.workspace_low_m)
        self.high = anchor + np.asarray(limits.workspace_high_m)
        self.last_pose: np.ndarray | None = None

    def check(self, q: np.ndarray, pose: np.ndarray, force_n: float) -> str | None:
        """Why the robot must stop now, or None."""
        lim = self.limits
        if not (np.isfinite(q).all() and np.isfinite(pose).all() and np.isfinite(force_n)):
            return "robot state is not finite"
        if force_n > lim.max_force_n:
            return f"contact force {force_n:.1f} N above the limit {lim.max_force_n:.1f} N"
        outside = np.maximum(self.low - pose[:3], pose[:3] - self.high).max()
        if outside > lim.stop_margin_m:
            return f"probe {outside * 1000:.1f} mm outside the workspace box (margin {lim.stop_margin_m * 1000:.0f} mm)"
        if self.last_pose is not None:
            speed = np.linalg.norm(pose[:3] - self.last_pose[:3]) / self.dt
            if speed > lim.stop_speed_m_s:
                return f"probe speed {speed:.3f} m/s above the stop speed {lim.stop_speed_m_s:.3f} m/s"
        self.last_pose = np.asarray(pose, np.float64)
        return None

    def clamp(self, target: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The target (7,) inside the box and within one period's speed of `previous` (7,), and
        the names of the limits that changed it."""
        lim, clamped = self.limits, []
        position = np.clip(target[:3], self.low, self.high)
        if not np.array_equal(position, target[:3]):
            clamped.append("workspace")
        step = position - previous[:3]
        max_step = lim.max_speed_m_s * self.dt
        if np.linalg.norm(step) > max_step:
            position = previous[:3] + step * (max_step / np.linalg.norm(step))
            clamped.append("speed")
        r_prev = quat_to_matrix(torch.tensor(np.array(previous[3:], np.float64))[None])
        turn = rotation_log(r_prev.transpose(-1, -2) @ quat_to_matrix(torch.tensor(np.array(target[3:], np.float64))[None]))
        angle, max_angle = float(turn.norm()), lim.max_angular_speed_rad_s * self.dt
        quat = target[3:]
        if angle > max_angle:
            quat = matrix_to_quat(r_prev @ rotation_exp(turn * (max_angle / angle)))[0].numpy()
            clamped.append("angular_speed")
        if not clamped:
            return target, clamped
        return np.concatenate([position, quat]).astype(target.dtype), clamped
