"""A scene of named robots, each holding one named tool, placed around one patient.

Backend-neutral description (the torch side is `sim.backends.torch.scene.TorchScene`): which
arms stand where relative to the patient, which tool each holds at which URDF frame, and how each
tracks its tool's targets. Units are SI: metres, radians; poses are (x, y, z, qw, qx, qy, qz).

Frames: every base pose is given in the anchor frame, the patient frame shifted so the centre of
landmark `SceneCfg.anchor` (a vertebra, e.g. "vertebrae_L3") is the origin, axes unchanged
(patient frame: +x the patient's right, -y posterior, i.e. up for a prone patient, +z superior).
One placement therefore suits every patient. Tool targets and tool poses are patient-frame poses
of the robot's `tool_frame` link.

Every config validates itself on construction and raises `sim.errors.InputError` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sim.errors import InputError
from sim.robot.contact import DEFAULT_STIFFNESS_N_PER_M
from sim.robot.mount import RobotCfg

TOOL_KINDS = ("probe", "drill")

# Tool parameters each kind understands, with their defaults.
TOOL_PARAMS: dict[str, dict[str, float]] = {
    # stiffness_n_per_m: skin stiffness of the probe-skin contact model (sim.robot.contact), N/m.
    "probe": {"stiffness_n_per_m": DEFAULT_STIFFNESS_N_PER_M},
    # No drilling physics yet: a drill is a tool frame that tracks its targets.
    "drill": {},
}


def _positive(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{what}: expected a positive finite number, got {value!r}")


def _count(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{what}: expected an int >= {minimum}, got {value!r}")


def _name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what}: expected a non-empty string, got {value!r}")


def _identifier(value: Any, what: str) -> None:
    """Robot and tool names key dicts, metrics and physics-scene prim paths: identifiers only."""
    if not isinstance(value, str) or not value.isidentifier():
        raise InputError(f"{what}: expected an identifier (letters, digits, underscores), got {value!r}")


def _vector(value: Any, n: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected {n} finite numbers, got {value!r}") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise InputError(f"{what}: expected {n} finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class ToolCfg:
    """A tool held by one robot.

    name: the tool's name in the scene (keys of targets, tool poses and contacts), unique.
    kind: "probe" (an ultrasound probe: skin contact is reported) or "drill" (a tool frame that
    tracks its targets; no drilling physics). params: kind-specific settings (see TOOL_PARAMS;
    missing ones take their defaults, unknown ones raise): probe `stiffness_n_per_m` (N/m).
    """

    name: str
    kind: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _identifier(self.name, "tool.name")
        if self.kind not in TOOL_KINDS:
            raise InputError(f"tool {self.name!r}: kind: expected one of {list(TOOL_KINDS)}, got {self.kind!r}")
        if not isinstance(self.params, dict):
            raise InputError(f"tool {self.name!r}: params: expected a dict, got {type(self.params).__name__}")
        known = TOOL_PARAMS[self.kind]
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            raise InputError(
                f"tool {self.name!r}: params: unknown keys {unknown} for a {self.kind} (known: {sorted(known)})"
            )
        for key, value in self.params.items():
            _positive(value, f"tool {self.name!r}: params.{key}")

    def param(self, key: str) -> float:
        """The value of parameter `key`, or its default for this kind."""
        return float(self.params.get(key, TOOL_PARAMS[self.kind][key]))


@dataclass(frozen=True)
class SceneRobotCfg:
    """One named arm of the scene, holding `tool`.

    name: the robot's name in the scene (keys of joint-angle dicts), unique. robot: a URDF under
    assets/robots ("iiwa14", "panda") or a path to a .urdf file (as `sim.robot.arm.Arm` accepts).
    tool_frame: the URDF link whose pose is the tool's (e.g. "probe_tip", "drill_tip").
    base_position_m (3,) / base_quat_wxyz (4,): the robot base's pose in the anchor frame (see the
    module docstring), metres and a unit quaternion. substeps: DLS steps per control step, each
    moving every joint by at most its velocity limit x dt / substeps. damping: DLS lambda.
    reset_ik_iterations: DLS iterations that place the tool at an episode's start target.
    """

    name: str
    robot: str
    tool_frame: str
    base_position_m: tuple[float, float, float]
    base_quat_wxyz: tuple[float, float, float, float]
    tool: ToolCfg
    substeps: int = 2
    damping: float = 0.05
    reset_ik_iterations: int = 10

    def __post_init__(self) -> None:
        _identifier(self.name, "robot.name")
        what = f"robot {self.name!r}"
        _name(self.robot, f"{what}: robot")
        _name(self.tool_frame, f"{what}: tool_frame")
        object.__setattr__(self, "base_position_m", _vector(self.base_position_m, 3, f"{what}: base_position_m"))
        quat = _vector(self.base_quat_wxyz, 4, f"{what}: base_quat_wxyz")
        norm = math.sqrt(sum(v * v for v in quat))
        if abs(norm - 1.0) > 1e-6:
            raise InputError(f"{what}: base_quat_wxyz: expected a unit quaternion (w, x, y, z), got norm {norm:.6g}")
        object.__setattr__(self, "base_quat_wxyz", quat)
        if not isinstance(self.tool, ToolCfg):
            raise InputError(f"{what}: tool: expected a ToolCfg, got {type(self.tool).__name__}")
        _count(self.substeps, f"{what}: substeps", 1)
        _positive(self.damping, f"{what}: damping")
        _count(self.reset_ik_iterations, f"{what}: reset_ik_iterations", 0)

    @classmethod
    def from_robot_cfg(cls, name: str, robot: RobotCfg, tool: ToolCfg | None = None) -> SceneRobotCfg:
        """A scene robot from a task's single-arm `RobotCfg` (us_nav's `task.robot`), holding a probe
        named "probe" with the RobotCfg's skin stiffness unless `tool` is given."""
        if tool is None:
            tool = ToolCfg("probe", "probe", {"stiffness_n_per_m": robot.stiffness_n_per_m})
        return cls(
            name=name,
            robot=robot.name,
            tool_frame=robot.tool_frame,
            base_position_m=robot.base_position_m,
            base_quat_wxyz=robot.base_quat_wxyz,
            tool=tool,
            substeps=robot.substeps,
            damping=robot.damping,
            reset_ik_iterations=robot.reset_ik_iterations,
        )


@dataclass(frozen=True)
class SceneCfg:
    """Named robots (each with one named tool) around one patient.

    robots: at least one `SceneRobotCfg`; robot names and tool names are each unique. anchor: the
    patient landmark (a vertebra name, e.g. "vertebrae_L3") whose centre is the origin of the
    anchor frame the base poses are given in.
    """

    robots: tuple[SceneRobotCfg, ...]
    anchor: str = "vertebrae_L3"

    def __post_init__(self) -> None:
        if isinstance(self.robots, SceneRobotCfg) or not isinstance(self.robots, (tuple, list)) or not self.robots:
            raise InputError(f"scene.robots: expected a non-empty tuple of SceneRobotCfg, got {self.robots!r}")
        object.__setattr__(self, "robots", tuple(self.robots))
        for i, robot in enumerate(self.robots):
            if not isinstance(robot, SceneRobotCfg):
                raise InputError(f"scene.robots[{i}]: expected a SceneRobotCfg, got {type(robot).__name__}")
        for key, names in (
            ("name", [r.name for r in self.robots]),
            ("tool.name", [r.tool.name for r in self.robots]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise InputError(f"scene.robots[].{key}: expected unique names, got duplicates {dup}")
        _name(self.anchor, "scene.anchor")

    def robot(self, name: str) -> SceneRobotCfg:
        """The robot called `name`."""
        for robot in self.robots:
            if robot.name == name:
                return robot
        raise InputError(f"robot: expected one of {[r.name for r in self.robots]}, got {name!r}")
