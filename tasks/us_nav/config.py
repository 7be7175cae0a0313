"""`UsNavCfg`: goal-conditioned probe navigation to lumbar standard planes (Hydra: `task.*`).

Units: metres, radians, newtons, seconds. One control step lasts 1 / control_hz seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.robot.mount import RobotCfg
from sim.ultrasound.renderer import RendererConfig


@dataclass
class ActionCfg:
    """Probe motion per control step for an action in [-1, 1] (5 numbers, in this order).

    0, 1: translation along the probe's x (lateral, across the image) and y (elevation) axes,
    projected onto the skin, at most translation_m. 2: rotation about the beam, at most yaw_rad.
    3, 4: tilt about the probe's x and y axes, at most tilt_rad; the total tilt from the skin
    normal stays within max_tilt_rad; the yaw within yaw_range_rad (the wrist's range: the arm
    turns the probe through joint A7, which cannot spin forever). press_m: how far the face is
    pressed into the skin. A command the arm lags more than lag_steps steps behind is not taken,
    so commands never run away from a probe held at a joint limit.
    """

    translation_m: float = 0.005
    yaw_rad: float = 0.1
    tilt_rad: float = 0.05
    max_tilt_rad: float = 0.6
    yaw_range_rad: tuple[float, float] = (-3.6, 0.5)
    press_m: float = 0.002
    lag_steps: float = 2.0


@dataclass
class GoalCfg:
    """Goals: a standard plane of one of `levels` (landmark names) seen in one of `views`."""

    levels: tuple[str, ...] = ("vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4", "vertebrae_L5")
    views: tuple[str, ...] = ("transverse", "parasagittal_left", "parasagittal_right")


@dataclass
class StartCfg:
    """Episode starts: the probe somewhere on the back, beam along the skin normal.

    around: "anchor" (the start box is centred on the anchor vertebra, yaw_rad is the start
    rotation about the beam: 0 has image x along patient +x; the lumbar standard planes sit at
    -pi (transverse) and -pi/2 (parasagittal)) or "goal" (the box is centred on the goal and
    yaw_rad is the offset from the goal's yaw, wrapped into actions.yaw_range_rad: the probe
    starts near the plane it looks for, as a sonographer does after the first survey).
    half_extent_m: (x, z) half-size of the start box (left-right, head-foot). yaw_rad: [low, high].
    """

    around: str = "anchor"
    half_extent_m: tuple[float, float] = (0.04, 0.09)
    yaw_rad: tuple[float, float] = (-math.pi, 0.0)


@dataclass
class RewardCfg:
    """The reward: a weighted sum of terms (`tasks/us_nav/mdp/rewards.py`), each field but
    max_force_n the weight (>= 0) of the term of its name; each term is logged as `Reward/<name>`.

    progress_position / progress_angle: per metre / radian of goal error removed this step.
    success: once, when the goal has been held (no per-step bonus for being within tolerance: a
    policy learns to hover near the goal collecting it instead of finishing). Penalties (their
    terms are negative): force: per newton of contact force above max_force_n; action_rate: per
    squared change of the action; action_excess: per squared overshoot of the policy's raw
    actions beyond [-1, 1].

    Costs (extras["costs"], per step, logged per episode as `Cost/<name>`): contact_force, the
    probe's contact force above max_force_n in N (0 below it). max_force_n is also the unit of
    the force observation.
    """

    progress_position: float = 100.0
    progress_angle: float = 10.0
    success: float = 10.0
    force: float = 0.1
    action_rate: float = 0.01
    action_excess: float = 0.2
    max_force_n: float = 10.0


@dataclass
class SuccessCfg:
    """Success: within position_m and angle_rad of the goal pose for hold_steps steps in a row."""

    position_m: float = 0.005
    angle_rad: float = math.radians(5.0)
    hold_steps: int = 3


@dataclass
class ObservationCfg:
    """What the policy sees.

    images: the current ultrasound image (history frames, newest first) and the goal image;
    False gives the relative goal pose instead (`us_nav_state`). image_size: policy image side
    in pixels. randomize_imaging: per-episode gain, dynamic range, frequency and tissue draws.
    position_scale_m / angle_scale_rad: relative-pose units the observation divides by;
    workspace_scale_m: the unit of the probe position (anchor frame) in the proprioception.
    planes: 1 (the image plane) or 2 (biplane, as a matrix-array probe images: the image plane
    and the plane turned 90 degrees about the beam side by side, S x 2S; `sim.ultrasound.biplane`).
    """

    images: bool = True
    image_size: int = 64
    history: int = 2
    randomize_imaging: bool = False
    position_scale_m: float = 0.05
    angle_scale_rad: float = 1.0
    workspace_scale_m: float = 0.1
    planes: int = 1


@dataclass
class UsNavCfg:
    """The `us_nav` task. anchor: the landmark the robot and the start box are placed around.

    probe: a preset name under conf/probe or a mapping of `ProbeSpec` fields; the policy image
    size overrides its image size. renderer: `RendererConfig` settings; compiled by default (torch.compile fuses
    the renderer into CPU loops or GPU kernels; the first step compiles, about a minute on CPU), the
    setting the README's and BENCHMARKS' figures were measured with; quick tests pass compile=False.
    """

    name: str = "us_nav"
    episode_steps: int = 100
    control_hz: float = 10.0
    anchor: str = "vertebrae_L3"
    workspace_half_extent_m: tuple[float, float] = (0.07, 0.13)
    actions: ActionCfg = field(default_factory=ActionCfg)
    goal: GoalCfg = field(default_factory=GoalCfg)
    start: StartCfg = field(default_factory=StartCfg)
    reward: RewardCfg = field(default_factory=RewardCfg)
    success: SuccessCfg = field(default_factory=SuccessCfg)
    observation: ObservationCfg = field(default_factory=ObservationCfg)
    robot: RobotCfg = field(default_factory=RobotCfg)
    renderer: RendererConfig = field(default_factory=lambda: RendererConfig(compile=True))
