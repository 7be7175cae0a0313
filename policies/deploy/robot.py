"""What the runtime and a robot exchange: an episode's session, the robot's state, probe targets.

All poses are (x, y, z, qw, qx, qy, qz) in the robot's task frame (metres), the frame deploy.json
names: for a real robot, the patient frame registered to the robot (from the planning CT or a
surface scan); for the simulator, the patient frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sim.errors import InputError, require

SURFACE_KEYS = ("x0", "z0", "dx", "dz", "y", "normal")
MAX_FORCE_N = 1000.0  # a measured contact force beyond this is a sensor fault, not a reading
MAX_DOF = 64
MAX_IMAGE_PIXELS = 4096  # per side of an ultrasound frame or goal image
MAX_GRID_CELLS = 10000  # per side of the skin height map
MAX_GRID_STEP_M = 0.1
UNIT_TOLERANCE = 1e-3  # quaternion and normal norms


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
        """The inverse of `to_arrays` (any mapping of arrays, e.g. an open .npz file), checked:
        exactly the known names, shapes, finite values, unit normals and quaternions."""
        need = ["anchor_m", *(f"surface_{k}" for k in SURFACE_KEYS)]
        start_keys = ["start_xz", "start_yaw", "start_tilt"]
        names = set(arrays)
        missing, unknown = (
            [k for k in need if k not in names],
            sorted(names - set(need) - {"goal_pose", "goal_image", *start_keys}),
        )
        if missing or unknown or 0 < len(names & set(start_keys)) < 3:
            raise InputError(
                f"session: expected arrays {need}, optionally goal_pose, "
                f"goal_image and all of {start_keys}; got {sorted(names)}"
            )
        get = lambda k: np.asarray(arrays[k]) if k in arrays else None  # noqa: E731
        anchor = _checked("session anchor_m", get("anchor_m"), (3,))
        surface = {
            k: float(_checked(f"session surface_{k}", get(f"surface_{k}"), ())) for k in ("x0", "z0", "dx", "dz")
        }
        for k in ("dx", "dz"):
            require(
                0 < surface[k] <= MAX_GRID_STEP_M,
                f"session surface_{k}",
                f"a grid step in (0, {MAX_GRID_STEP_M}] m",
                surface[k],
            )
        y = _array("session surface_y", get("surface_y"), 2)
        require(
            2 <= min(y.shape) and max(y.shape) <= MAX_GRID_CELLS,
            "session surface_y shape",
            f"(A, B) with 2 <= A, B <= {MAX_GRID_CELLS}",
            y.shape,
        )
        require(
            not np.isinf(y).any() and np.isfinite(y).any(),
            "session surface_y",
            "finite skin heights (NaN off the body), some finite",
            "inf or all NaN",
        )
        normal = _checked("session surface_normal", get("surface_normal"), (*y.shape, 3), finite=False)
        on_body = normal[np.isfinite(y)]
        unit = np.isfinite(on_body).all() and np.abs(np.linalg.norm(on_body, axis=-1) - 1).max() <= UNIT_TOLERANCE
        require(
            unit and not np.isinf(normal).any(),
            "session surface_normal",
            "unit normals wherever surface_y is finite",
            "non-unit or non-finite normals",
        )
        surface.update(y=y, normal=normal)
        goal_pose = None if get("goal_pose") is None else checked_pose("session goal_pose", get("goal_pose"))
        goal_image = (
            None if get("goal_image") is None else _checked_image("session goal_image", get("goal_image"), square=True)
        )
        start = None
        if "start_xz" in names:
            xz, yaw, tilt = (_checked(f"session {k}", get(k), shape) for k, shape in zip(start_keys, ((2,), (), (2,))))
            start = (xz, float(yaw), tilt)
        return cls(anchor, surface, goal_pose, goal_image, start)


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


def check_state(state: RobotState, dof: int | None = None) -> RobotState:
    """`state`, checked (raise `InputError` naming the field): q (dof,) finite (any dof from 1 to
    MAX_DOF when None), probe_pose (7,) finite with a unit quaternion, force_n a finite number in
    [0, MAX_FORCE_N] N, frame None or (H, W) finite in [0, 1], done a bool."""
    q = _array("robot state q", state.q, 1)
    expected = f"({dof},)" if dof is not None else f"(dof,) with 1 <= dof <= {MAX_DOF}"
    require(q.shape == (dof,) if dof is not None else 1 <= len(q) <= MAX_DOF, "robot state q shape", expected, q.shape)
    require(np.isfinite(q).all(), "robot state q", "finite joint angles", q.tolist())
    force = state.force_n
    number = isinstance(force, (int, float, np.floating, np.integer)) and not isinstance(force, (bool, np.bool_))
    require(
        number and 0 <= force <= MAX_FORCE_N, "robot state force_n", f"a number in [0, {MAX_FORCE_N}] N", repr(force)
    )
    require(isinstance(state.done, (bool, np.bool_)), "robot state done", "a bool", repr(state.done))
    return RobotState(
        q,
        checked_pose("robot state probe_pose", state.probe_pose),
        float(force),
        None if state.frame is None else _checked_image("robot state frame", state.frame),
        bool(state.done),
    )


def _array(what: str, value, ndim: int) -> np.ndarray:
    """`value` as a float array of `ndim` dimensions; raise `InputError` naming `what` otherwise."""
    array = np.asarray(value)
    require(
        array.dtype.kind in "fiu" and array.ndim == ndim,
        what,
        f"a {ndim}-d numeric array",
        f"dtype {array.dtype} shape {array.shape}",
    )
    return array.astype(np.float64 if array.dtype.kind != "f" else array.dtype)


def _checked(what: str, value, shape: tuple[int, ...], finite: bool = True) -> np.ndarray:
    """A float array of exactly `shape`, all finite unless finite=False."""
    array = _array(what, value, len(shape))
    require(array.shape == shape, f"{what} shape", shape, array.shape)
    require(not finite or np.isfinite(array).all(), what, "finite values", "NaN or inf")
    return array


def checked_pose(what: str, value) -> np.ndarray:
    """A finite pose (7,) whose quaternion has unit norm within UNIT_TOLERANCE."""
    pose = _checked(what, value, (7,))
    norm = float(np.linalg.norm(pose[3:]))
    require(
        abs(norm - 1) <= UNIT_TOLERANCE,
        f"{what} quaternion",
        f"unit norm (within {UNIT_TOLERANCE})",
        f"norm {norm:.6g}",
    )
    return pose


def _checked_image(what: str, value, square: bool = False) -> np.ndarray:
    """A finite image (H, W) in [0, 1] with 1 <= H, W <= MAX_IMAGE_PIXELS (H == W if square)."""
    image = _array(what, value, 2)
    ok = (
        1 <= min(image.shape)
        and max(image.shape) <= MAX_IMAGE_PIXELS
        and (not square or image.shape[0] == image.shape[1])
    )
    require(
        ok, f"{what} shape", f"({'S, S' if square else 'H, W'}) with sides from 1 to {MAX_IMAGE_PIXELS}", image.shape
    )
    require(
        np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1,
        what,
        "finite values in [0, 1]",
        f"[{image.min()}, {image.max()}]",
    )
    return image


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
