"""What the runtime and a robot exchange: an episode's session, the robot's state, tool targets.

All poses are (x, y, z, qw, qx, qy, qz) in the robot's task frame (metres), the frame deploy.json
names: for a real robot, the patient frame registered to the robot (from the planning CT or a
surface scan); for the simulator, the patient frame.

Beyond what every robot reports (joint angles, its tool's pose and contact force, an ultrasound
frame), a task's robot may report more: other tracked tools' poses and named scalar signals (a
drill's thrust, say), and its session may carry named task arrays (a screw plan). deploy.json's
robot.reports declares the extras (`Reports`), which the runtime checks every state against; the
task's controller checks the session arrays it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
MAX_EXTRAS = 8  # extra tool poses, signals or session task arrays, each (the bridge's frames hold 16 arrays)
MAX_EXTRA_NAME_CHARS = 48  # "tool/" or "task/" + this fits the bridge's 64-character array names
MAX_SIGNAL = 1e6  # |a signal| beyond this is a sensor fault (or a unit mistake), not a reading
MAX_TASK_ARRAY_VALUES = 4096  # per session task array: plans and parameters, not volumes
TASK_PREFIX = "task/"  # session task arrays in `Session.to_arrays`


@dataclass
class Session:
    """What the robot knows at the start of an episode.

    anchor_m (3,): the anchor point (deploy.json task_frame) in the task frame. surface: the skin
    as a height map over the task x-z plane {x0, z0, dx, dz (float, m), y (A, B) skin height
    (NaN off the body), normal (A, B, 3) outward unit normals}: a registered surface scan on a
    real robot. goal_pose (7,) for state policies; goal_image (S, S) in [0, 1] for image
    policies. start_command: the commanded probe state (xz (2,), yaw, tilt (2,)) the probe was
    placed with, if known; otherwise the runtime reads it off the measured pose. task: named
    task arrays {name: finite array} (us_surgery: the screw plan), checked by the task's
    controller; at most MAX_EXTRAS of at most MAX_TASK_ARRAY_VALUES values each.
    """

    anchor_m: np.ndarray
    surface: dict
    goal_pose: np.ndarray | None = None
    goal_image: np.ndarray | None = None
    start_command: tuple[np.ndarray, float, np.ndarray] | None = None
    task: dict[str, np.ndarray] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat named arrays (scalars as 0-d arrays): for the network bridge and .npz files."""
        out = {"anchor_m": np.asarray(self.anchor_m)}
        out.update({f"surface_{k}": np.asarray(v) for k, v in self.surface.items()})
        for name in ("goal_pose", "goal_image"):
            if getattr(self, name) is not None:
                out[name] = np.asarray(getattr(self, name))
        if self.start_command is not None:
            out.update({f"start_{k}": np.asarray(v) for k, v in zip(("xz", "yaw", "tilt"), self.start_command)})
        out.update({f"{TASK_PREFIX}{k}": np.asarray(v) for k, v in self.task.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Session":
        """The inverse of `to_arrays` (any mapping of arrays, e.g. an open .npz file), checked:
        exactly the known names (and task arrays named "task/<name>"), shapes, finite values, unit
        normals and quaternions."""
        need = ["anchor_m", *(f"surface_{k}" for k in SURFACE_KEYS)]
        start_keys = ["start_xz", "start_yaw", "start_tilt"]
        names = set(arrays)
        task_names = sorted(n for n in names if isinstance(n, str) and n.startswith(TASK_PREFIX))
        missing, unknown = (
            [k for k in need if k not in names],
            sorted(names - set(need) - {"goal_pose", "goal_image", *start_keys, *task_names}),
        )
        if missing or unknown or 0 < len(names & set(start_keys)) < 3:
            raise InputError(
                f"session: expected arrays {need}, optionally goal_pose, goal_image, "
                f"all of {start_keys} and task arrays {TASK_PREFIX}<name>; got {sorted(names)}"
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
        require(len(task_names) <= MAX_EXTRAS, "session task arrays", f"at most {MAX_EXTRAS}", len(task_names))
        task = {}
        for key in task_names:
            name = key[len(TASK_PREFIX) :]
            _check_name(f"session array {key!r}", name)
            array = np.asarray(arrays[key])
            require(
                array.dtype.kind in "fiu" and array.ndim <= 4 and array.size <= MAX_TASK_ARRAY_VALUES,
                f"session {key}",
                f"a numeric array of at most 4 dimensions and {MAX_TASK_ARRAY_VALUES} values",
                f"dtype {array.dtype} shape {array.shape}",
            )
            task[name] = _checked(f"session {key}", array, array.shape)
        return cls(anchor, surface, goal_pose, goal_image, start, task)


@dataclass
class RobotState:
    """The robot now. q (dof,) joint angles, rad, in deploy.json's joint order; probe_pose (7,):
    the pose of the robot's own tool, the one its targets move (deploy.json robot.tool_frame: the
    probe for us_nav, the drill tip for us_surgery; the name is the first task's, kept by the API
    and the bridge's wire format); force_n: that tool's contact force magnitude, N; frame (H, W)
    the latest ultrasound frame in [0, 1] (None for state policies); done: the robot or its
    operator ends the episode. tools: other tracked tools' poses {name: (7,)} (us_surgery: the
    ultrasound probe held by a second arm); signals: named scalar signals {name: float} (us_surgery:
    drill thrust, drilled depth, in bone). deploy.json's robot.reports says which (`Reports`)."""

    q: np.ndarray
    probe_pose: np.ndarray
    force_n: float
    frame: np.ndarray | None = None
    done: bool = False
    tools: dict[str, np.ndarray] = field(default_factory=dict)
    signals: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Reports:
    """What a task's robot reports beyond every robot's state (deploy.json robot.reports): the
    names of the other tracked tools' poses and each signal's name with its range [low, high]
    (a reading outside it is a fault, not a state)."""

    tools: tuple[str, ...] = ()
    signals: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, robot: dict) -> "Reports":
        """The reports of deploy.json's (checked) robot part; none where it has no "reports" key."""
        reports = robot.get("reports", {})
        tools = tuple(reports.get("tool_poses", {}))
        signals = {k: (float(v["range"][0]), float(v["range"][1])) for k, v in reports.get("signals", {}).items()}
        return cls(tools, signals)

    def describe(self) -> str:
        return f"tool poses {list(self.tools)} and signals {sorted(self.signals)}"


def check_state(state: RobotState, dof: int | None = None, reports: Reports | None = None) -> RobotState:
    """`state`, checked (raise `InputError` naming the field): q (dof,) finite (any dof from 1 to
    MAX_DOF when None), probe_pose (7,) finite with a unit quaternion, force_n a finite number in
    [0, MAX_FORCE_N] N, frame None or (H, W) finite in [0, 1], done a bool, tools at most
    MAX_EXTRAS poses like probe_pose, signals at most MAX_EXTRAS finite numbers within
    +-MAX_SIGNAL. With `reports`, exactly the tools and signals it names, each signal in its range
    (None: any names, as a bridge that does not know the policy passes them on)."""
    q = _array("robot state q", state.q, 1)
    expected = f"({dof},)" if dof is not None else f"(dof,) with 1 <= dof <= {MAX_DOF}"
    require(q.shape == (dof,) if dof is not None else 1 <= len(q) <= MAX_DOF, "robot state q shape", expected, q.shape)
    require(np.isfinite(q).all(), "robot state q", "finite joint angles", q.tolist())
    force = state.force_n
    in_range = _number(force) and 0 <= force <= MAX_FORCE_N
    require(in_range, "robot state force_n", f"a number in [0, {MAX_FORCE_N}] N", repr(force))
    require(isinstance(state.done, (bool, np.bool_)), "robot state done", "a bool", repr(state.done))
    tools, signals = _checked_extras(state, reports)
    return RobotState(
        q,
        checked_pose("robot state probe_pose", state.probe_pose),
        float(force),
        None if state.frame is None else _checked_image("robot state frame", state.frame),
        bool(state.done),
        tools,
        signals,
    )


def _checked_extras(state: RobotState, reports: Reports | None) -> tuple[dict, dict]:
    """The state's tools and signals, checked as `check_state` says."""
    for what, extras in (("tools", state.tools), ("signals", state.signals)):
        require(
            isinstance(extras, dict) and len(extras) <= MAX_EXTRAS,
            f"robot state {what}",
            f"a mapping of at most {MAX_EXTRAS} names",
            type(extras).__name__ if not isinstance(extras, dict) else f"{len(extras)} names",
        )
        for name in extras:
            _check_name(f"robot state {what} name", name)
    if reports is not None:
        for what, got, want in (("tools", state.tools, reports.tools), ("signals", state.signals, reports.signals)):
            require(
                set(got) == set(want),
                f"robot state {what}",
                f"exactly {sorted(want)} (deploy.json robot.reports)",
                sorted(got),
            )
    tools = {name: checked_pose(f"robot state tools[{name!r}]", pose) for name, pose in state.tools.items()}
    signals = {}
    for name, value in state.signals.items():
        low, high = reports.signals[name] if reports is not None else (-MAX_SIGNAL, MAX_SIGNAL)
        require(
            _number(value) and low <= value <= high,
            f"robot state signals[{name!r}]",
            f"a number in [{low:g}, {high:g}]",
            repr(value),
        )
        signals[name] = float(value)
    return tools, signals


def _number(value: object) -> bool:
    """A real number that is not a bool (NaN passes here; range checks refuse it)."""
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_name(what: str, name: object) -> None:
    """A name of 1 to MAX_EXTRA_NAME_CHARS lowercase letters, digits and underscores."""
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= MAX_EXTRA_NAME_CHARS
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)
    )
    require(ok, what, f"1-{MAX_EXTRA_NAME_CHARS} lowercase letters, digits and underscores", repr(name)[:80])


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
        """Begin an episode with the tool at its start pose (a probe on the skin, a drill at its start)."""

    def read(self) -> RobotState:
        """The state after the last target's control step (or at the start)."""

    def send(self, target: np.ndarray) -> None:
        """Move toward the target pose (7,) of the robot's tool for one control step."""

    def stop(self, reason: str) -> None:
        """End the episode: hold still ("done" for a normal end, else why the runtime stopped)."""


def task_frame(anchor: str) -> str:
    """deploy.json's task_frame: the patient frame, anchored at the centre of landmark `anchor`."""
    return (
        "patient frame (x left-right, y anterior-posterior, z head-foot; metres); "
        f"the anchor point is the centre of {anchor}"
    )


def robot_description(arm, base_position_m, base_quat_wxyz) -> dict:
    """deploy.json's robot part for `sim.robot.arm.Arm` arm standing at base_position_m (3,) and
    base_quat_wxyz (4,) in the anchor frame: its URDF, tool frame, base pose and joints (order, limits)."""
    return {
        "name": arm.name,
        "urdf": arm.urdf_path.name,
        "tool_frame": arm.tool_frame,
        "base_pose_in_anchor_frame": [*base_position_m, *base_quat_wxyz],
        "joints": [
            {"name": n, "lower_rad": lo, "upper_rad": hi, "velocity_rad_s": v}
            for n, lo, hi, v in zip(arm.joint_names, arm.lower.tolist(), arm.upper.tolist(), arm.velocity.tolist())
        ],
    }
