"""The geometric shield (`ShieldCfg`): actions projected so the commanded drill stays in the plan's corridor.

A virtual fixture, as shared-control spine robots hold their guide on the plan: an action is
changed only where what it commands would leave the corridor, and then by the least that keeps
it in (a projection, never a zeroing). All functions are batched over N drills (patient frame,
metres, radians) and sync-free.

The corridor about a plan (entry point, unit axis, length): with s the distance of a point along
the axis past the entry and r its distance from the plan's line, r <= margin_m + max(0, -s)
tan(funnel_rad) (a cylinder from the entry on, a funnel before it) and s <= length +
depth_margin_m (the depth stop); the drill's axis within angle_rad of the plan's.

`project` takes the commanded motion as the robot-side controller does (`tasks.us_surgery.deploy`):
the tip translated (in bone across the bit only), the drill tilted, then fed along its new axis.
1. Translation: a tip that would leave the corridor goes to the nearest point of the corridor
   instead (of its cylinder or its funnel, whichever holds the tip now, so the step is no longer
   than the one commanded); a tip already outside moves toward the corridor by at most a step.
2. Tilt: an axis that would leave the cone turns to the cone's nearest direction instead.
3. In bone the channel turns about its entry (a push or tilt re-aims it, `drill_motion.move`):
   where the re-aimed tip (as if the bone gave way fully) would leave the corridor or cone, the
   motion is scaled down to the largest share that keeps it in (bisection).
4. Feed: at most the advance whose end stays in the corridor, from the pose before the motion and
   after it (conservatively: against the corridor's radius where a full step's feed would end).
"""

from __future__ import annotations

import math

import torch

from sim.errors import require, require_number
from sim.transforms import clamp_norm, rotation_exp
from tasks.us_surgery.config import ActionCfg, ShieldCfg, StartCfg
from tasks.us_surgery.mdp import drill_motion

TOLERANCE = 1e-6  # an action changed by more than this (action units) counts as an intervention
_BISECTIONS = 12  # the in-bone motion share is found to 1/4096
_EPS_M = 1e-9  # a point this close to the corridor's wall counts as inside (rounding)


def check_cfg(cfg: ShieldCfg, start: StartCfg, what: str = "task.shield") -> None:
    """InputError naming the setting unless `cfg` is a valid shield whose corridor holds every
    episode start of `start` (when enabled)."""
    require(isinstance(cfg.enabled, bool), f"{what}.enabled", "true or false", repr(cfg.enabled))
    require_number(cfg.margin_m, f"{what}.margin_m", 0.0, 0.02, low_open=True)
    require_number(cfg.funnel_rad, f"{what}.funnel_rad", 0.0, math.radians(60.0), low_open=True)
    require_number(cfg.depth_margin_m, f"{what}.depth_margin_m", 0.0, 0.02)
    require_number(cfg.angle_rad, f"{what}.angle_rad", 0.0, math.radians(45.0), low_open=True)
    if not cfg.enabled:
        return
    widest = cfg.margin_m + start.standoff_m * math.tan(cfg.funnel_rad)
    require(
        widest >= start.offset_m,
        f"{what}.funnel_rad",
        f"a funnel holding every start (task.start.offset_m {start.offset_m * 1e3:g} mm off the axis "
        f"{start.standoff_m * 1e3:g} mm before the entry)",
        f"{cfg.funnel_rad!r} rad, {widest * 1e3:.2f} mm wide there",
    )
    require(
        cfg.angle_rad >= start.tilt_rad,
        f"{what}.angle_rad",
        f"at least the start's largest tilt (task.start.tilt_rad {start.tilt_rad:g})",
        repr(cfg.angle_rad),
    )


def coordinates(points: torch.Tensor, entry: torch.Tensor, axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s (N,), v (N, 3)) of points (N, 3): the distance along the unit axis (N, 3) past the entry
    (N, 3), and the offset from the plan's line (|v| = r)."""
    rel = points - entry
    s = (rel * axis).sum(-1)
    return s, rel - s[:, None] * axis


def allowed_radius(s: torch.Tensor, cfg: ShieldCfg) -> torch.Tensor:
    """(N,) the corridor's radius, metres, at distances s (N,) past the entry."""
    return cfg.margin_m + (-s).clamp_min(0.0) * math.tan(cfg.funnel_rad)


def outside_m(
    points: torch.Tensor, entry: torch.Tensor, axis: torch.Tensor, stop: torch.Tensor, cfg: ShieldCfg
) -> torch.Tensor:
    """(N,) how far points (N, 3) are beyond the corridor, metres (0 inside): radially beyond the
    allowed radius or axially beyond the stop (N,) (the larger)."""
    s, v = coordinates(points, entry, axis)
    return torch.maximum(v.norm(dim=-1) - allowed_radius(s, cfg), s - stop).clamp_min(0.0)


def axis_angle(z: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """(N,) the angle, radians, between unit drill axes z (N, 3) and the plan's axes (N, 3)."""
    return torch.atan2(torch.linalg.cross(z, axis).norm(dim=-1), (z * axis).sum(-1))


def _cylinder_point(s, v, r, stop, cfg):
    """The nearest point (s, v) of the capped cylinder r <= margin_m, s <= stop."""
    return s.clamp(max=stop), v * (cfg.margin_m / r.clamp_min(1e-12)).clamp(max=1.0)[:, None]


def _funnel_point(s, v, r, stop, cfg):
    """The nearest point (s, v) of the funnel's cone r <= margin_m + (-s) tan(funnel_rad) (apex
    past the entry), cut at the stop (where the cone lies in the cylinder)."""
    f = cfg.funnel_rad
    apex = cfg.margin_m / math.tan(f)
    u = apex - s  # distance behind the apex
    inside = r <= u * math.tan(f)
    t = (u * math.cos(f) + r * math.sin(f)).clamp_min(0.0)  # along the cone's wall; 0: the apex
    unit = v / r.clamp_min(1e-12)[:, None]
    ps = torch.where(inside, s, apex - t * math.cos(f))
    pv = torch.where(inside[:, None], v, unit * (t * math.sin(f))[:, None])
    return ps.clamp(max=stop), pv


def _translate(world, tip, entry, axis, stop, cfg, step_m):
    """Translations world (N, 3) whose tip would leave the corridor, projected (see the module)."""
    s0, v0 = coordinates(tip, entry, axis)
    r0 = v0.norm(dim=-1)
    s, v = coordinates(tip + world, entry, axis)
    r = v.norm(dim=-1)
    cyl_s, cyl_v = _cylinder_point(s, v, r, stop, cfg)
    fun_s, fun_v = _funnel_point(s, v, r, stop, cfg)
    cyl = entry + cyl_s[:, None] * axis + cyl_v
    fun = entry + fun_s[:, None] * axis + fun_v
    goal = tip + world
    d_cyl, d_fun = (cyl - goal).norm(dim=-1), (fun - goal).norm(dim=-1)
    # A convex part holding the tip holds the projected step no longer than the commanded one.
    in_cyl = (r0 <= cfg.margin_m + _EPS_M) & (s0 <= stop + _EPS_M)
    in_fun = r0 <= (cfg.margin_m / math.tan(cfg.funnel_rad) - s0) * math.tan(cfg.funnel_rad) + _EPS_M
    in_fun = in_fun & (s0 <= stop + _EPS_M)
    use_fun = torch.where(in_cyl | in_fun, in_fun & (~in_cyl | (d_fun < d_cyl)), d_fun < d_cyl)
    projected = torch.where(use_fun[:, None], fun, cyl)
    return clamp_norm(projected - tip, step_m)  # from outside: toward the corridor by at most a step


def _nearest_direction(z: torch.Tensor, axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Unit directions (N, 3): z (N, 3) where within angle of the axes (N, 3), else the cone's
    nearest direction (on its boundary, in the plane of z and the axis)."""
    perp = z - (z * axis).sum(-1, keepdim=True) * axis
    unit = perp / perp.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return math.cos(angle) * axis + math.sin(angle) * unit


def _tilt_to(rot: torch.Tensor, z: torch.Tensor, tilt_rad: float) -> torch.Tensor:
    """Tilt actions (N, 2) turning drills rot (N, 3, 3) by the smallest rotation onto unit z (N, 3),
    scaled down to within [-1, 1] (a shorter turn along the same way)."""
    old = rot[:, :, 2]
    cross = torch.linalg.cross(old, z)
    angle = torch.atan2(cross.norm(dim=-1), (old * z).sum(-1))
    turn = cross / cross.norm(dim=-1, keepdim=True).clamp_min(1e-12) * angle[:, None]
    tilt = (rot.transpose(-1, -2) @ turn[:, :, None])[:, :2, 0] / tilt_rad  # about drill x, y (z: 0)
    return tilt / tilt.abs().amax(-1, keepdim=True).clamp_min(1.0)


def _feed_room(p, z, entry, axis, stop, cfg, feed_step_m):
    """(N,) metres unit axes z (N, 3) may advance from tips p (N, 3) and stay in the corridor: within
    the depth stop, and within the radius the corridor has where a full step's feed would end (its
    narrowest there, conservatively); 0 from outside."""
    s, v = coordinates(p, entry, axis)
    cos = (z * axis).sum(-1)
    radius = allowed_radius(s + feed_step_m * cos.clamp_min(0.0), cfg)
    # |v + z_perp d| <= radius: the largest root of a quadratic in d (none: the bit runs parallel).
    z_perp = z - cos[:, None] * axis
    a, b = z_perp.square().sum(-1), (v * z_perp).sum(-1)
    c = (v.square().sum(-1) - radius.square()).clamp_max(0.0)
    root = (-b + (b.square() - a * c).sqrt()) / a.clamp_min(1e-12)
    radial = torch.where(a > 1e-12, root, torch.full_like(s, math.inf))
    radial = torch.where(v.norm(dim=-1) <= radius + _EPS_M, radial, torch.zeros_like(s))
    axial = torch.where(cos > 0, (stop - s).clamp_min(0.0) / cos.clamp_min(1e-12), torch.full_like(s, math.inf))
    return torch.minimum(radial, axial)


def project(
    actions: torch.Tensor,
    tip: torch.Tensor,
    rot: torch.Tensor,
    in_bone: torch.Tensor,
    depth: torch.Tensor,
    entry: torch.Tensor,
    target: torch.Tensor,
    axis: torch.Tensor,
    action_cfg: ActionCfg,
    feed_step_m: float,
    cfg: ShieldCfg,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(actions (N, 6), intervened (N,) bool): actions (N, 6) in [-1, 1] (`ActionCfg`) projected
    into the corridor (see the module) for drills with tips (N, 3) and orientations rot (N, 3, 3),
    in_bone (N,) bool with the drilled depth (N,) m from the channel's entry (tip - z depth), and
    plans entry, target, unit axis (N, 3). feed_step_m: the bit's most advance per step (the feed
    at full command, max_feed_m_s x dt). An action left unchanged is returned bit for bit;
    intervened: changed by more than TOLERANCE."""
    z = rot[:, :, 2]
    stop = (target - entry).norm(dim=-1) + cfg.depth_margin_m
    world, _ = drill_motion.commanded_motion(actions, action_cfg, rot)
    world = torch.where(in_bone[:, None], drill_motion.across_bit(world, z), world)
    step = _translate(world, tip, entry, axis, stop, cfg, action_cfg.translation_m)
    move = (rot.transpose(-1, -2) @ step[:, :, None])[:, :, 0] / action_cfg.translation_m
    keep = outside_m(tip + world, entry, axis, stop, cfg) <= _EPS_M
    out = actions.clone()
    out[:, :3] = torch.where(keep[:, None], actions[:, :3], move)
    _, tilt = drill_motion.commanded_motion(out, action_cfg, rot)
    turned = (rot @ rotation_exp(tilt))[:, :, 2]
    in_cone = axis_angle(turned, axis) <= cfg.angle_rad
    nearest = _tilt_to(rot, _nearest_direction(turned, axis, cfg.angle_rad), action_cfg.tilt_rad)
    out[:, 3:5] = torch.where(in_cone[:, None], out[:, 3:5], nearest)
    out = _hold_in_bone(out, tip, rot, in_bone, depth, entry, axis, stop, action_cfg, cfg)
    # The feed: from the pose now and from where the motion (fully taken) puts the drill.
    moved_tip, moved_rot = _fully_moved(out, tip, rot, in_bone, depth, action_cfg)
    room = torch.minimum(
        _feed_room(tip, z, entry, axis, stop, cfg, feed_step_m),
        _feed_room(moved_tip, moved_rot[:, :, 2], entry, axis, stop, cfg, feed_step_m),
    )
    feed = torch.minimum(out[:, 5], room / feed_step_m)
    out[:, 5] = torch.where(out[:, 5] > feed, feed, out[:, 5])
    intervened = ((out - actions).abs() > TOLERANCE).any(-1)
    return torch.where(intervened[:, None], out, actions), intervened


def _fully_moved(actions, tip, rot, in_bone, depth, action_cfg):
    """The drill's (tip (N, 3), R (N, 3, 3)) after the motion of actions as the bone would let it
    fully (`drill_motion.move` with lateral 1, nothing blocking), the channel's entry tip - z depth."""
    channel = tip - rot[:, :, 2] * depth[:, None]
    never = torch.zeros_like(in_bone)
    tip, rot, _ = drill_motion.move(
        actions, action_cfg, tip, rot, in_bone, channel, depth, torch.ones_like(depth), lambda p: never
    )
    return tip, rot


def _hold_in_bone(actions, tip, rot, in_bone, depth, entry, axis, stop, action_cfg, cfg):
    """Actions whose motion (translation and tilt) would re-aim a channel in bone out of the
    corridor or cone (as if the bone gave way fully), scaled down to the largest share (found by
    bisection) that does not take the re-aimed tip or axis farther out than they are now."""
    z = rot[:, :, 2]
    ones = torch.ones_like(depth)
    worst = outside_m(tip, entry, axis, stop, cfg) + _EPS_M
    widest = torch.clamp_min(axis_angle(z, axis), cfg.angle_rad) + 1e-7
    motion = torch.zeros_like(actions[:1])
    motion[:, [0, 1, 3, 4]] = 1.0

    def holds(share: torch.Tensor) -> torch.Tensor:
        scaled = actions * (1.0 - motion + motion * share[:, None])
        new_tip, new_rot = _fully_moved(scaled, tip, rot, in_bone, depth, action_cfg)
        out = outside_m(new_tip, entry, axis, stop, cfg) <= worst
        return out & (axis_angle(new_rot[:, :, 2], axis) <= widest)

    full = holds(ones) | ~in_bone
    low, high = torch.zeros_like(depth), ones
    for _ in range(_BISECTIONS):  # a fixed number of halvings: no host sync
        mid = (low + high) / 2
        ok = holds(mid)
        low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
    share = torch.where(full, ones, low)
    return torch.where(full[:, None], actions, actions * (1.0 - motion + motion * share[:, None]))
