"""us_nav's declared spaces: its observation groups and actions, from the config alone.

The segments follow the observation terms (`tasks/us_nav/mdp/observations.py`) in order; their
names are those of deploy.json's input layout (`tasks.us_nav.deploy.observation_layout`).
Bounds are those the terms guarantee (up to float rounding); unbounded segments have +-inf.
"""

from __future__ import annotations

import math

from sim.envs.spaces import Segment, Space
from tasks.us_nav.config import UsNavCfg

ACTION_NAMES = ("lateral", "elevation", "yaw", "tilt_x", "tilt_y")
ACTION_UNITS = ("m", "m", "rad", "rad", "rad")


def action_space(cfg: UsNavCfg) -> Space:
    """(5,) in [-1, 1]: each action times its scale is this step's probe motion (see `ActionCfg`)."""
    a = cfg.actions
    scales = (a.translation_m, a.translation_m, a.yaw_rad, a.tilt_rad, a.tilt_rad)
    return Space.vector(*(Segment(n, 1, -1.0, 1.0, u, s) for n, u, s in zip(ACTION_NAMES, ACTION_UNITS, scales)))


def _relative_goal(cfg: UsNavCfg) -> list[Segment]:
    o = cfg.observation
    bound = math.pi / o.angle_scale_rad  # a rotation vector is at most pi long
    return [
        Segment("goal_position_in_probe", 3, unit="m", scale=o.position_scale_m),
        Segment("goal_rotation_in_probe", 3, -bound, bound, "rad", o.angle_scale_rad),
    ]


def _pose_state(cfg: UsNavCfg, dof: int) -> list[Segment]:
    """The critic's pose: where the probe is, which the actor must not see (see `pose_state`)."""
    return [
        Segment("joint_positions", dof, -1.0, 1.0),  # within the joint limits, mapped to [-1, 1]
        Segment("probe_position", 3, unit="m", scale=cfg.observation.workspace_scale_m),
    ]


def _proprioception(cfg: UsNavCfg) -> list[Segment]:
    return [
        Segment("yaw_sin", 1, -1.0, 1.0),
        Segment("yaw_cos", 1, -1.0, 1.0),
        Segment("tilt", 2, -1.0, 1.0, "rad", cfg.actions.max_tilt_rad),
        Segment("contact_force", 1, 0.0, math.inf, "N", cfg.reward.max_force_n),
        Segment("last_action", len(ACTION_NAMES), -1.0, 1.0),
    ]


def _progress() -> list[Segment]:
    """The critic's progress state: errors over 20 tolerances, hold fraction, episode fraction."""
    return [Segment(name, 1, 0.0, 1.0) for name in ("position_error", "angle_error", "hold", "elapsed")]


def observation_spaces(cfg: UsNavCfg, dof: int) -> dict[str, Space]:
    """{"policy", "image" (with images), "critic"} for an arm of `dof` joints, in
    `UsNavEnv.get_observations`'s order; images: (history + 1, S, S) in [0, 1], newest first,
    the goal image last."""
    o = cfg.observation
    proprio = _proprioception(cfg)
    spaces = {"policy": Space.vector(*proprio) if o.images else Space.vector(*_relative_goal(cfg), *proprio)}
    if o.images:
        frames = (Segment("history", o.history, 0.0, 1.0), Segment("goal_image", 1, 0.0, 1.0))
        spaces["image"] = Space((o.history + 1, o.image_size, o.planes * o.image_size), frames)
    spaces["critic"] = Space.vector(*_relative_goal(cfg), *_pose_state(cfg, dof), *proprio, *_progress())
    return spaces
