"""What the runtime and a robot exchange: an episode's session, the robot's state, probe targets.

All poses are (x, y, z, qw, qx, qy, qz) in the robot's task frame (metres), the frame deploy.json
names: for a real robot, the patient frame registered to the robot (from the planning CT or a
surface scan); for the simulator, the patient frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sim.errors import InputError

SURFACE_KEYS = ("x0", "z0", "dx", "dz", "y", "normal")


@dataclass
class Session:
    """What the robot knows at the start of an episode.

    anchor_m (3,): the anchor point (deploy.json task_frame) in the task frame. surface: the skin
    as a height map over the task x-z plane {x0, z0, dx, dz (float, m), y (A, B) skin height
    (NaN off the body), normal (A, B, 3) outward unit normals}: a registered surface scan on a
    real robot. goal_pose (7,) for state policies; goal_image (S, S) in [0, 1] for image
    policies. start_command: the commanded probe state (xz (2,), yaw, tilt (2,)) the probe was
    placed with, if known; otherwise the runtime reads it off the measured pose.
    """

    anchor_m: np.ndarray
    surface: dict
    goal_pose: np.ndarray | None = None
    goal_image: np.ndarray | None = None
    start_command: tuple[np.ndarray, float, np.ndarray] | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat named arrays (scalars as 0-d arrays): for the network bridge and .npz files."""
        out = {"anchor_m": np.asarray(self.anchor_m)}
        out.update({f"surface_{k}": np.asarray(v) for k, v in self.surface.items()})
        for name in ("goal_pose", "goal_image"):
            if getattr(self, name) is not None:
                out[name] = np.asarray(getattr(self, name))
        if self.start_command is not None:
            out.update({f"start_{k}": np.asarray(v) for k, v in zip(("xz", "yaw", "tilt"), self.start_command)})
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Session":
        """The inverse of `to_arrays` (any mapping of arrays, e.g. an open .npz file)."""
        need = ["anchor_m", *(f"surface_{k}" for k in SURFACE_KEYS)]
        missing = [k for k in need if k not in arrays]
        if missing:
            raise InputError(f"session: missing {missing}; expected {need} and optionally goal_pose, goal_image, start_xz/yaw/tilt")
        surface = {k: arrays[f"surface_{k}"] for k in SURFACE_KEYS}
        surface.update({k: float(surface[k]) for k in ("x0", "z0", "dx", "dz")})
        start = None
        if "start_xz" in arrays:
            start = (np.asarray(arrays["start_xz"]), float(arrays["start_yaw"]), np.asarray(arrays["start_tilt"]))
        get = lambda k: np.asarray(arrays[k]) if k in arrays else None  # noqa: E731
        return cls(np.asarray(arrays["anchor_m"]), surface, get("goal_pose"), get("goal_image"), start)


@dataclass
class RobotState:
    """The robot now. q (dof,) joint angles, rad, in deploy.json's joint order; probe_pose (7,);
    force_n: probe contact force, N; frame (H, W) the latest ultrasound frame in [0, 1] (None for
    state policies); done: the robot or its operator ends the episode."""

    q: np.ndarray
    probe_pose: np.ndarray
    force_n: float
    frame: np.ndarray | None = None
    done: bool = False


class RobotInterface(Protocol):
    """A robot (or the simulator) as the runtime drives it, one control step at a time."""

    def start(self) -> Session:
        """Begin an episode with the probe at its start pose on the skin."""

    def read(self) -> RobotState:
        """The state after the last target's control step (or at the start)."""

    def send(self, target: np.ndarray) -> None:
        """Move toward the probe target pose (7,) for one control step."""

    def stop(self, reason: str) -> None:
        """End the episode: hold still ("done" for a normal end, else why the runtime stopped)."""
