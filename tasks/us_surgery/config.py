"""`UsSurgeryCfg`: ultrasound-guided pedicle-screw pilot-hole drilling with two arms (Hydra: `task.*`).

Units: metres, radians, newtons, seconds. One control step lasts 1 / control_hz seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sim.surgery.drilling import DrillCfg
from sim.ultrasound.renderer import RendererConfig

LEVELS = ("vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4", "vertebrae_L5")
SIDES = ("left", "right")


@dataclass
class GoalCfg:
    """Goals: the screw plan (`sim.anatomy.plans`) of one of `levels` on one of `sides`, drawn per episode."""

    levels: tuple[str, ...] = LEVELS
    sides: tuple[str, ...] = SIDES


@dataclass
class ActionCfg:
    """Drill motion per control step for an action in [-1, 1] (6 numbers, in this order).

    0, 1, 2: translation of the drill tip along the drill frame's x, y and z (z: along the bit),
    at most translation_m in all (the vector is clipped to that length). Outside bone the tip
    moves freely through soft tissue (a percutaneous approach) but never into bone: a step that
    would put the tip into bone is not taken. In bone the axial part is dropped (only drilling
    advances the bit) and the lateral part is scaled by the drill's lateral factor (the bone
    holds the shaft, `sim.surgery.drilling`). 3, 4: tilt about the drill frame's x and y, at most
    tilt_rad each, about the tip outside bone and about the channel's entry (scaled likewise) in
    bone. 5: feed command; max(0, action) of the drill's max feed (negative: no feed; the bit is
    never pulled back).
    """

    translation_m: float = 0.002
    tilt_rad: float = 0.03


@dataclass
class StartCfg:
    """Episode starts: the drill tip on the planned axis, standoff_m before the plan's entry point
    (in the soft tissue over the bone, as through a stab incision), shifted across the axis by up to
    offset_m and tilted by up to tilt_rad (uniform draws)."""

    standoff_m: float = 0.012
    offset_m: float = 0.003
    tilt_rad: float = math.radians(5.0)


@dataclass
class ProbeHoldCfg:
    """Where the probe arm holds the probe: on the skin beside the drill's way in, with its image
    plane through the planned axis, so the drill is imaged in plane along its path (in-plane
    guidance, as for needles) and the pedicle lies in the view. The probe's face ends clearance_m
    short of where the planned axis crosses the skin, on the midline side, plus a uniform draw in
    [0, jitter_m] per episode; its plane is shifted by a uniform draw in +-elevation_jitter_m along
    its normal; the face is pressed press_m into the skin."""

    clearance_m: float = 0.004
    jitter_m: float = 0.004
    elevation_jitter_m: float = 0.0005
    press_m: float = 0.003


@dataclass
class TrackingCfg:
    """The optical tracking and registration a navigated system provides (policy observations
    only; the critic, rewards and costs use the true poses). registration_m / registration_rad:
    standard deviation of a per-episode offset of the plan in the probe frame (translation and
    rotation, drawn per episode); tracking_m / tracking_rad: standard deviation of per-step noise
    on the tracked drill tip pose."""

    registration_m: float = 0.0005
    registration_rad: float = math.radians(0.5)
    tracking_m: float = 0.0002
    tracking_rad: float = math.radians(0.2)


@dataclass
class RewardCfg:
    """The reward: a weighted sum of terms (`tasks/us_surgery/mdp/rewards.py`), each field the
    weight (>= 0) of the term of its name, logged as `Reward/<name>`.

    progress_tip / progress_axis: per metre of tip-to-target distance and per radian of axis
    error removed this step. success: once, at success. Penalties (negative terms): breach: per
    mm of new weighted breach this step (the cost below); failure: once, at an episode-ending
    breach; action_rate: per squared change of the action; action_excess: per squared overshoot
    of the raw actions beyond [-1, 1].

    Costs (extras["costs"], per step): breach_mm, the increase this step of the drilled
    channel's worst weighted breach in mm (`sim.surgery.breach`: breach depth beyond the
    vertebra's cortex along the whole channel with the drill radius, medial x2), so an episode's
    sum is its worst weighted breach in mm.
    """

    progress_tip: float = 200.0
    progress_axis: float = 20.0
    success: float = 10.0
    breach: float = 2.0
    failure: float = 10.0
    action_rate: float = 0.01
    action_excess: float = 0.2


@dataclass
class SuccessCfg:
    """Success (ends the episode): the drill in bone and stopped (no feed commanded: the policy ends the
    hole), its tip within tip_m of the plan's target and its axis within angle_rad of the plan's, with
    the worst breach at most grade max_grade ("A".."E", Gertzbein-Robbins).
    Failure (ends the episode): a breach of grade fail_grade or worse, or the drill in the spinal canal."""

    tip_m: float = 0.002
    angle_rad: float = math.radians(5.0)
    max_grade: str = "B"
    fail_grade: str = "D"


@dataclass
class ShieldCfg:
    """An optional geometric shield (a virtual fixture, as shared-control spine robots hold their
    guide on the plan, REFERENCE §7): each action is projected so the commanded drill stays inside
    the plan's corridor (`tasks.us_surgery.mdp.shield`), never merely zeroed. Off by default; on in
    training and evaluation with task.shield.enabled=true, in deployment as exported or by deploy.shield.

    The corridor, about the plan's line from its entry point along its axis (s: the tip's distance
    along the axis past the entry, r: its distance from the line):
    - margin_m: r at most this once the tip is at or past the entry (s >= 0). 2 mm: the
      Gertzbein-Robbins grade A/B bound (a breach under 2 mm is clinically acceptable) and about a
      robot's tip deviation (ExcelsiusGPS 2.1 mm, REFERENCE §7); a tip 2 mm off the plan puts the
      3.5 mm pilot bit's edge 3.75 mm off it, within a 7.5 mm screw's planned envelope.
    - funnel_rad: before the entry (s < 0) r may grow by (-s) tan(funnel_rad): a funnel leading the
      approach in. 15 deg: every default start (`StartCfg`: 3 mm off the axis 12 mm before the entry)
      lies inside with room (5.2 mm allowed there), narrow enough to bring the tip onto the entry
      (engineering choice).
    - depth_margin_m: s at most the plan's length plus this, a depth stop past the planned target.
      2 mm: the success test's tip tolerance (`SuccessCfg.tip_m`); beyond it the far (anterior) cortex
      and the vessels before the body lie.
    - angle_rad: the drill's axis within this of the plan's. 5 deg: the success test's angle and the
      start's largest tilt; about a robot's angular deviation (3.6 deg, REFERENCE §7).
    Every episode start must lie in the corridor (checked with the task's settings).
    """

    enabled: bool = False
    margin_m: float = 0.002
    funnel_rad: float = math.radians(15.0)
    depth_margin_m: float = 0.002
    angle_rad: float = math.radians(5.0)


@dataclass
class ObservationCfg:
    """What the policy sees.

    images: the ultrasound image history (newest first); False: none (`us_surgery_state`, the tracked
    poses only). image_size: policy image side in pixels. history: frames. position_scale_m: the unit
    of positions; force_scale_n: of the thrust.
    """

    images: bool = True
    image_size: int = 64
    history: int = 2
    position_scale_m: float = 0.05
    force_scale_n: float = 10.0


@dataclass
class ArmCfg:
    """One arm of the scene: its URDF ("iiwa14", "panda" or a path), tool frame link and base pose in
    the anchor frame (patient frame, origin at the anchor vertebra's centre), and its tracking settings
    (`sim.backends.scene.SceneRobotCfg`)."""

    robot: str
    tool_frame: str
    base_position_m: tuple[float, float, float]
    base_quat_wxyz: tuple[float, float, float, float]
    substeps: int = 2
    damping: float = 0.05
    reset_ik_iterations: int = 10


def _probe_arm() -> ArmCfg:
    """The iiwa at us_nav's mount: 0.55 m to the patient's right, base z up (patient -y)."""
    return ArmCfg("iiwa14", "probe_tip", (0.55, 0.0, 0.0), (0.0, 0.0, math.sqrt(0.5), -math.sqrt(0.5)))


def _drill_arm() -> ArmCfg:
    """The Panda on the patient's left, 0.40 m lateral of the anchor at its height, base z up and base
    x toward the patient; 40 IK iterations bring the drill from the ready pose to an episode's start."""
    h = math.sqrt(0.5)
    return ArmCfg("panda", "drill_tip", (-0.40, 0.0, 0.0), (h, h, 0.0, 0.0), reset_ik_iterations=40)


@dataclass
class UsSurgeryCfg:
    """The `us_surgery` task. anchor: the landmark the robot bases stand around.

    drill: `DrillCfg` settings (bit, feed by tissue, thrust, lateral resistance); the task's default
    feeds 6 mm/s at full command in soft tissue (2 mm/s in cancellous bone, 0.2 mm/s in cortex).
    renderer: `RendererConfig` settings (compiled by default, as us_nav). shield: `ShieldCfg` (off).
    """

    name: str = "us_surgery"
    episode_steps: int = 250
    control_hz: float = 5.0
    anchor: str = "vertebrae_L3"
    probe_arm: ArmCfg = field(default_factory=_probe_arm)
    drill_arm: ArmCfg = field(default_factory=_drill_arm)
    skin_stiffness_n_per_m: float = 2000.0
    goal: GoalCfg = field(default_factory=GoalCfg)
    actions: ActionCfg = field(default_factory=ActionCfg)
    start: StartCfg = field(default_factory=StartCfg)
    probe_hold: ProbeHoldCfg = field(default_factory=ProbeHoldCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)
    drill: DrillCfg = field(default_factory=lambda: DrillCfg(max_feed_m_s=6e-3))
    reward: RewardCfg = field(default_factory=RewardCfg)
    success: SuccessCfg = field(default_factory=SuccessCfg)
    observation: ObservationCfg = field(default_factory=ObservationCfg)
    shield: ShieldCfg = field(default_factory=ShieldCfg)
    renderer: RendererConfig = field(default_factory=lambda: RendererConfig(compile=True))
