"""us_surgery's declared spaces: its observation groups and actions, from the config alone.

The segments follow `UsSurgeryEnv.get_observations` in order. Bounds are those the terms guarantee
(up to float rounding); unbounded segments have +-inf.
"""

from __future__ import annotations

import math

from sim.envs.spaces import Segment, Space
from tasks.us_surgery.config import UsSurgeryCfg

ACTION_NAMES = ("translate_x", "translate_y", "translate_z", "tilt_x", "tilt_y", "feed")
ACTION_UNITS = ("m", "m", "m", "rad", "rad", "1")


def action_space(cfg: UsSurgeryCfg) -> Space:
    """(6,) in [-1, 1]: each action times its scale is this step's drill motion (see `ActionCfg`);
    feed: max(0, action) of the drill's max feed."""
    a = cfg.actions
    scales = (a.translation_m, a.translation_m, a.translation_m, a.tilt_rad, a.tilt_rad, 1.0)
    return Space.vector(*(Segment(n, 1, -1.0, 1.0, u, s) for n, u, s in zip(ACTION_NAMES, ACTION_UNITS, scales)))


def _plan_in_drill(scale: float) -> list[Segment]:
    return [
        Segment("plan_target_in_drill", 3, unit="m", scale=scale),
        Segment("plan_entry_in_drill", 3, unit="m", scale=scale),
        Segment("plan_axis_in_drill", 3, -1.0, 1.0),
    ]


def _drilling(cfg: UsSurgeryCfg, dof: int) -> list[Segment]:
    o = cfg.observation
    return [
        Segment("drilled_depth", 1, 0.0, cfg.drill.length_m / o.position_scale_m, "m", o.position_scale_m),
        Segment("thrust", 1, 0.0, math.inf, "N", o.force_scale_n),
        Segment("in_bone", 1, 0.0, 1.0),
        Segment("drill_joint_positions", dof, -1.0, 1.0),  # within the joint limits, mapped to [-1, 1]
        Segment("last_action", len(ACTION_NAMES), -1.0, 1.0),
    ]


def _privileged(cfg: UsSurgeryCfg) -> list[Segment]:
    """The critic's true errors and breach state."""
    return [
        Segment("tip_error", 1, 0.0, math.inf, "m", cfg.observation.position_scale_m),
        Segment("angle_error", 1, 0.0, math.pi, "rad"),
        Segment("depth_error", 1, unit="m", scale=cfg.observation.position_scale_m),
        Segment("lateral_factor", 1, 0.0, 1.0),
        Segment("worst_breach", 1, 0.0, math.inf, "mm", 10.0),
        Segment("elapsed", 1, 0.0, 1.0),
    ]


def observation_spaces(cfg: UsSurgeryCfg, dof: int) -> dict[str, Space]:
    """{"policy", "image" (with images), "critic"} for a drill arm of `dof` joints; images: (history,
    S, S) in [0, 1], newest first."""
    o = cfg.observation
    tracked = [
        *_plan_in_drill(o.position_scale_m),
        Segment("drill_tip_in_probe", 3, unit="m", scale=o.position_scale_m),
        Segment("drill_axis_in_probe", 3, -1.0, 1.0),
    ]
    spaces = {"policy": Space.vector(*tracked, *_drilling(cfg, dof))}
    if o.images:
        spaces["image"] = Space((o.history, o.image_size, o.image_size), (Segment("history", o.history, 0.0, 1.0),))
    spaces["critic"] = Space.vector(*_plan_in_drill(o.position_scale_m), *_drilling(cfg, dof), *_privileged(cfg))
    return spaces
