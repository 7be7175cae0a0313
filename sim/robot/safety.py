"""Safety limits the runtime enforces on every tool target and every robot state.

Targets are clamped: into the workspace box, to the maximum feed along the tool's z axis (a
drill's bit) where the limits have one, and to the maximum linear and angular speed from the
previous target. The robot is stopped when its measured state breaks a limit: contact force above
the maximum, drill thrust above the maximum (where the limits have one), the tool outside the box
by more than the stop margin, measured speed beyond the stop speed, or anything non-finite.

Every limit lies within a hard bound defined here, checked whenever limits are built (at export,
and again when an exported folder is loaded): no setting, file or command line can switch a limit
off (NaN, infinity) or relax it beyond what is safe for a probe on a patient.

- Contact force: diagnostic ultrasound scans typically press with about 5-20 N; the hard maximum
  is 45 N, our choice of an upper bound at a little over twice the top of that range (room for
  firm scanning of a thick back, none for a limit that would let the arm lean on a patient), so
  a limit in (0, 45] N.
- Probe speed (commanded and measured stop speed): ISO 10218's reduced speed for a robot working
  beside people, 250 mm/s at the tool, so (0, 0.25] m/s.
- Angular speed: (0, 2.5] rad/s: a point of the probe or its holder 100 mm from the tool frame
  then moves at most 250 mm/s, the reduced speed above.
- Stop margin: the probe may leave the box by at most 50 mm before the robot stops: (0, 0.05] m.
- Workspace box: finite, low < high, each side at most 1 m and every corner within 1 m of the
  anchor point: a box around one patient's back, never the whole room.
- Drill feed (optional, a robot that drills): the commanded tip may advance along the bit at most
  this fast, (0, MAX_FEED_BOUND_M_S] = (0, 10] mm/s, the drilling model's own ceiling on any
  configured feed (`sim.surgery.drilling`): ten times the clinical 1 mm/s (REFERENCE §7).
- Drill thrust (optional, a robot that drills): the robot stops above it, (0, 30] N. Human
  trans-pedicular drilling peaks at about 5.7 N and porcine vertebrae take 0.6-29.6 N (REFERENCE
  §7); 30 N covers the densest bone measured and is five times the human peak, so a limit beyond
  it would let the arm push the bit instead of letting it cut, the way a bit plunges through the
  far cortex when it breaks through.
- Control period: [1 ms, 1 s]: faster than a robot controller's cycle or slower than a human
  could follow is a wrong file, not a setting (a negative period would reverse the speed clamp).
- Export settings (speed_margin [1, 10], workspace_margin_m [0, 0.1] m, samples [1, 100000]):
  see their definitions below.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping

import numpy as np
import torch

from sim.config import check_fields
from sim.errors import require
from sim.surgery.drilling import MAX_FEED_BOUND_M_S
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_exp, rotation_log


@dataclass(frozen=True)
class Bound:
    """A closed or half-open interval a setting must lie in: (low, high] when low_open, else
    [low, high]; integer: the value must be an int (bool is not)."""

    low: float
    high: float
    unit: str = ""
    low_open: bool = True
    integer: bool = False

    def __str__(self) -> str:
        interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{interval} {self.unit}".rstrip()

    def check(self, value: object, what: str) -> float | int:
        """`value` as a float (an int for integer bounds) if it is a real finite number inside
        the bound; otherwise InputError naming `what`, the bound and the value."""
        kind = "an integer" if self.integer else "a finite number"
        real = isinstance(value, numbers.Integral if self.integer else numbers.Real) and not isinstance(
            value, (bool, np.bool_)
        )
        number = float(value) if real else math.nan
        inside = (
            math.isfinite(number)
            and (self.low < number if self.low_open else self.low <= number)
            and number <= self.high
        )
        require(inside, what, f"{kind} in {self}", repr(value) if isinstance(value, str) else value)
        return int(value) if self.integer else number


# The hard bounds (see the module docstring for their reasons).
FORCE_N = Bound(0.0, 45.0, "N")
SPEED_M_S = Bound(0.0, 0.25, "m/s")
ANGULAR_SPEED_RAD_S = Bound(0.0, 2.5, "rad/s")
STOP_MARGIN_M = Bound(0.0, 0.05, "m")
WORKSPACE_COORD_M = Bound(-1.0, 1.0, "m", low_open=False)  # each corner coordinate, anchor frame
MAX_WORKSPACE_SIDE_M = 1.0
DT_S = Bound(1e-3, 1.0, "s", low_open=False)
FEED_M_S = Bound(0.0, MAX_FEED_BOUND_M_S, "m/s")
THRUST_N = Bound(0.0, 30.0, "N")
THRUST_SIGNAL = "thrust_n"  # the robot state's signal (`policies.deploy.robot.RobotState.signals`) a thrust limit reads
OPTIONAL_LIMITS = ("max_feed_m_s", "max_thrust_n")  # absent (None): the robot has no such tool
# Export settings the limits are derived from (conf `export.*`): targets may move up to
# speed_margin times one full action step per period (1: no slack for the skin's curvature;
# 10: clamps that no longer mean anything); the box is widened by at most 10 cm; the samples
# checked against the training model are a real number of them, not a memory bomb.
SPEED_MARGIN = Bound(1.0, 10.0, low_open=False)
WORKSPACE_MARGIN_M = Bound(0.0, 0.1, "m", low_open=False)
SAMPLES = Bound(1, 100_000, low_open=False, integer=True)


@dataclass(frozen=True)
class SafetyLimits:
    """workspace_low_m / workspace_high_m (3,): the tool's box around the anchor point (anchor
    frame, metres). max_speed_m_s / max_angular_speed_rad_s: the fastest a target may move.
    stop_speed_m_s: measured tool speed that stops the robot (at least max_speed_m_s, so a
    target moving at the maximum never stops the robot). max_force_n: contact force that stops
    the robot. stop_margin_m: how far outside the box the measured tool may be.

    A robot that drills has two more (None for any other robot; OPTIONAL_LIMITS):
    max_feed_m_s, the fastest a target may advance along the tool's z axis (the bit, into the
    body), and max_thrust_n, the drill thrust (the robot state's signal THRUST_SIGNAL) that stops
    the robot.

    Every value is checked against the module's hard bounds on construction (InputError naming
    the key); the limits are frozen, so a checked instance cannot be relaxed afterwards.
    """

    workspace_low_m: tuple[float, float, float]
    workspace_high_m: tuple[float, float, float]
    max_speed_m_s: float = field(metadata={"bound": SPEED_M_S})
    max_angular_speed_rad_s: float = field(metadata={"bound": ANGULAR_SPEED_RAD_S})
    stop_speed_m_s: float = field(metadata={"bound": SPEED_M_S})
    max_force_n: float = field(metadata={"bound": FORCE_N})
    stop_margin_m: float = field(default=0.01, metadata={"bound": STOP_MARGIN_M})
    max_feed_m_s: float | None = field(default=None, metadata={"bound": FEED_M_S})
    max_thrust_n: float | None = field(default=None, metadata={"bound": THRUST_N})

    def __post_init__(self) -> None:
        values = {k: v for k, v in asdict(self).items() if not (k in OPTIONAL_LIMITS and v is None)}
        for key, value in checked_limits(values, "safety limits").items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(cls, values: Mapping, what: str = "safety limits") -> "SafetyLimits":
        """Limits from a mapping (deploy.json's "safety"); `what` names it in errors. An optional
        limit is absent or a number: null would read as "no limit", which only a missing key says."""
        require(isinstance(values, Mapping), what, "a mapping of safety limits", type(values).__name__)
        check_fields(cls, values, what)  # every limit without a default, nothing unknown
        return cls(**checked_limits(values, what))

    def to_dict(self) -> dict:
        """The limits as deploy.json's "safety"; optional limits only where set (a probe robot's file
        has exactly the keys it had before the drill limits existed)."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
            if not (k in OPTIONAL_LIMITS and v is None)
        }


@dataclass(frozen=True)
class ExportSettings:
    """The settings safety limits are derived from at export (conf `export.*`), each within its
    hard bound: samples recorded to verify the graphs, max_force_n and stop_margin_m (copied into
    the limits), speed_margin (targets may move this many times faster than one full action step
    per period), workspace_margin_m (the box's widening beyond the task workspace) and
    max_thrust_n (copied into the limits of a robot that drills; 20 N by default, twice the
    simulated drill's thrust at full feed in cortex and 3.5 times the human peak of REFERENCE §7)."""

    samples: int = field(metadata={"bound": SAMPLES})
    max_force_n: float = field(metadata={"bound": FORCE_N})
    speed_margin: float = field(metadata={"bound": SPEED_MARGIN})
    workspace_margin_m: float = field(metadata={"bound": WORKSPACE_MARGIN_M})
    stop_margin_m: float = field(metadata={"bound": STOP_MARGIN_M})
    max_thrust_n: float = field(default=20.0, metadata={"bound": THRUST_N})

    @classmethod
    def from_dict(cls, values: Mapping, what: str = "export") -> "ExportSettings":
        """Settings from a mapping (Hydra's `export` section): every key required, none unknown,
        each value a finite number inside its bound (InputError naming `what`.<key>)."""
        require(isinstance(values, Mapping), what, "a mapping of export settings", type(values).__name__)
        check_fields(cls, values, what)
        return cls(**bounded_fields(cls, values, what))

    def __post_init__(self) -> None:
        for key, value in bounded_fields(type(self), asdict(self), "export").items():
            object.__setattr__(self, key, value)


def limits_for_steps(
    settings: "ExportSettings",
    step_m: float,
    step_rad: float,
    rate_hz: float,
    box: tuple[list[float], list[float]],
    **tool_limits: float,
) -> "SafetyLimits":
    """A task's limits from the export settings: targets may move speed_margin times faster than
    one full action step per period (step_m metres, step_rad radians at rate_hz); the robot stops at
    twice that speed, never above the hard bound of the speed limits; box (low, high) is the tool's
    workspace box in the anchor frame (already widened); tool_limits: a drill's max_feed_m_s and
    max_thrust_n. InputError naming export.speed_margin if the speeds leave their bounds."""
    max_speed = settings.speed_margin * step_m * rate_hz
    max_turn = settings.speed_margin * step_rad * rate_hz
    require(
        max_speed <= SPEED_M_S.high and max_turn <= ANGULAR_SPEED_RAD_S.high, "export.speed_margin",
        f"a margin that keeps the target speeds within {SPEED_M_S} and {ANGULAR_SPEED_RAD_S}",
        f"{settings.speed_margin} (max_speed_m_s {max_speed:.3f} m/s, max_angular_speed_rad_s {max_turn:.3f} rad/s)",
    )  # fmt: skip
    low, high = box
    return SafetyLimits(
        workspace_low_m=tuple(low),
        workspace_high_m=tuple(high),
        max_speed_m_s=max_speed,
        max_angular_speed_rad_s=max_turn,
        stop_speed_m_s=min(2 * max_speed, SPEED_M_S.high),
        max_force_n=settings.max_force_n,
        stop_margin_m=settings.stop_margin_m,
        **tool_limits,
    )


def bounded_fields(cls: type, values: Mapping, what: str) -> dict:
    """`values` with each field of dataclass `cls` that has a "bound" in its metadata checked
    against it (InputError naming `what`.<key>) and converted to float (int for integers)."""
    out = dict(values)
    for f in fields(cls):
        if "bound" in f.metadata and f.name in values:
            out[f.name] = f.metadata["bound"].check(values[f.name], f"{what}.{f.name}")
    return out


def checked_limits(values: Mapping, what: str) -> dict:
    """`values` (SafetyLimits fields) with numbers as floats and the box as tuples, each checked
    against its hard bound; InputError naming `what`.<key> otherwise."""
    out = bounded_fields(SafetyLimits, values, what)
    for key in ("workspace_low_m", "workspace_high_m"):
        corner = values[key]
        require(
            isinstance(corner, (list, tuple)) and len(corner) == 3,
            f"{what}.{key}",
            "3 numbers (x, y, z) in metres",
            corner,
        )
        out[key] = tuple(WORKSPACE_COORD_M.check(v, f"{what}.{key}[{i}]") for i, v in enumerate(corner))
    sides = [hi - lo for lo, hi in zip(out["workspace_low_m"], out["workspace_high_m"])]
    require(
        all(0 < s <= MAX_WORKSPACE_SIDE_M for s in sides),
        f"{what}.workspace_low_m / workspace_high_m",
        f"low < high with each side at most {MAX_WORKSPACE_SIDE_M} m",
        f"{list(out['workspace_low_m'])} and {list(out['workspace_high_m'])}",
    )
    if "max_speed_m_s" in out and "stop_speed_m_s" in out:
        stop, speed = out["stop_speed_m_s"], out["max_speed_m_s"]
        require(stop >= speed, f"{what}.stop_speed_m_s", f"at least max_speed_m_s ({speed} m/s)", stop)
    return out


class SafetyMonitor:
    """Applies `SafetyLimits` for one robot at control period dt_s around anchor (3,)."""

    def __init__(self, limits: SafetyLimits, anchor_m: np.ndarray, dt_s: float) -> None:
        require(isinstance(limits, SafetyLimits), "safety monitor limits", "SafetyLimits", type(limits).__name__)
        self.limits, self.dt = limits, DT_S.check(dt_s, "control period dt_s")
        anchor = np.asarray(anchor_m, np.float64)
        require(
            anchor.shape == (3,) and np.isfinite(anchor).all(),
            "safety monitor anchor_m",
            "3 finite numbers (metres)",
            anchor_m,
        )
        self.low = anchor + np.asarray(limits.workspace_low_m)
        self.high = anchor + np.asarray(limits.workspace_high_m)
        self.last_pose: np.ndarray | None = None

    def check(
        self, q: np.ndarray, pose: np.ndarray, force_n: float, signals: Mapping[str, float] | None = None
    ) -> str | None:
        """Why the robot must stop now, or None. signals: the robot's named scalar signals
        (`policies.deploy.robot.RobotState.signals`); a thrust limit reads THRUST_SIGNAL there and
        stops a robot that does not report it."""
        lim, signals = self.limits, signals or {}
        finite = np.isfinite(q).all() and np.isfinite(pose).all() and np.isfinite(force_n)
        if not (finite and all(np.isfinite(v) for v in signals.values())):
            return "robot state is not finite"
        if force_n > lim.max_force_n:
            return f"contact force {force_n:.1f} N above the limit {lim.max_force_n:.1f} N"
        if lim.max_thrust_n is not None:
            if THRUST_SIGNAL not in signals:
                return f"drill thrust not reported (signal {THRUST_SIGNAL!r}) for the thrust limit"
            if signals[THRUST_SIGNAL] > lim.max_thrust_n:
                return f"drill thrust {signals[THRUST_SIGNAL]:.1f} N above the limit {lim.max_thrust_n:.1f} N"
        outside = np.maximum(self.low - pose[:3], pose[:3] - self.high).max()
        if outside > lim.stop_margin_m:
            return f"tool {outside * 1000:.1f} mm outside the workspace box (margin {lim.stop_margin_m * 1000:.0f} mm)"
        if self.last_pose is not None:
            speed = np.linalg.norm(pose[:3] - self.last_pose[:3]) / self.dt
            if speed > lim.stop_speed_m_s:
                return f"tool speed {speed:.3f} m/s above the stop speed {lim.stop_speed_m_s:.3f} m/s"
        self.last_pose = np.asarray(pose, np.float64)
        return None

    def clamp(self, target: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The target (7,) inside the box, advancing along the previous target's z axis (a drill's
        bit) at most max_feed_m_s per period where the limits have a feed limit, and within one
        period's speed of `previous` (7,); and the names of the limits that changed it."""
        lim, clamped = self.limits, []
        position = np.clip(target[:3], self.low, self.high)
        if not np.array_equal(position, target[:3]):
            clamped.append("workspace")
        r_prev = quat_to_matrix(torch.tensor(np.array(previous[3:], np.float64))[None])
        if lim.max_feed_m_s is not None:
            # Only the advance is the feed: backing the bit out is bounded by the speed limit alone.
            bit = r_prev[0, :, 2].numpy()
            excess = float(np.dot(position - previous[:3], bit)) - lim.max_feed_m_s * self.dt
            if excess > 0:
                position = position - excess * bit
                clamped.append("feed")
        step = position - previous[:3]
        max_step = lim.max_speed_m_s * self.dt
        if np.linalg.norm(step) > max_step:
            position = previous[:3] + step * (max_step / np.linalg.norm(step))
            clamped.append("speed")
        turn = rotation_log(
            r_prev.transpose(-1, -2) @ quat_to_matrix(torch.tensor(np.array(target[3:], np.float64))[None])
        )
        angle, max_angle = float(turn.norm()), lim.max_angular_speed_rad_s * self.dt
        quat = target[3:]
        if angle > max_angle:
            quat = matrix_to_quat(r_prev @ rotation_exp(turn * (max_angle / angle)))[0].numpy()
            clamped.append("angular_speed")
        if not clamped:
            return target, clamped
        return np.concatenate([position, quat]).astype(target.dtype), clamped
