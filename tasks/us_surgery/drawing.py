"""us_surgery's layer of the play scene (`sim.viz.play_scene`, the registry's `drawing`): the
planned screw, the drill and the drilled channel coloured by its breach grade, and the plan
errors, breach, thrust and bone contact in the status line. Both arms, the probe's image plane
and the ultrasound image (with the drill in it) are the play scene's own.

Each solid is one unit cylinder (radius 1, z from 0 to 1) added once and placed every frame by
its actor's `user_matrix` (rotation, scale and offset), so a frame builds no meshes.
"""

from __future__ import annotations

import math

import numpy as np
import pyvista as pv
import torch

from sim.envs.snapshot import EnvSnapshot
from sim.errors import require
from sim.surgery.breach import GRADES
from sim.ultrasound.probe import ProbeSpec
from sim.viz.scene import pose_matrix
from tasks.us_surgery.env import DRILL, SHAFT_M

PLAN_RGB, PLAN_OPACITY = (0.16, 0.82, 0.24), 0.3  # translucent: the drill and channel show inside it
DRILL_RGB = (0.62, 0.64, 0.68)  # steel grey
# Gertzbein-Robbins grade A..E (`sim.surgery.breach.GRADES`): green (no breach) through dark red.
GRADE_RGB = {
    "A": (0.10, 0.60, 0.15),
    "B": (0.60, 0.80, 0.20),
    "C": (1.00, 0.55, 0.00),
    "D": (0.90, 0.10, 0.10),
    "E": (0.50, 0.00, 0.00),
}
# The channel is drawn a little wider than the bit that cut it, so it shows around the drill in it.
CHANNEL_WIDTH = 1.3
RESOLUTION = 24  # sides of each cylinder


def unit_cylinder() -> pv.PolyData:
    """A capped cylinder of radius 1 around the z axis from z = 0 to z = 1."""
    return pv.Cylinder(center=(0.0, 0.0, 0.5), direction=(0.0, 0.0, 1.0), radius=1.0, height=1.0, resolution=RESOLUTION)


def segment_matrix(start: np.ndarray, axis: np.ndarray, length_m: float, radius_m: float) -> np.ndarray:
    """(4, 4) transform taking `unit_cylinder` to the cylinder of radius_m from start (3,) along
    the direction axis (3,, any length > 0) for length_m (metres, > 0: a zero scale has no inverse
    for the lighting's normals)."""
    z = np.asarray(axis, float) / np.linalg.norm(axis)
    # Any x across z will do (a cylinder is round); take the world axis least aligned with z.
    x = np.cross(z, np.eye(3)[np.argmin(np.abs(z))])
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, np.cross(z, x), z], -1) * [radius_m, radius_m, length_m]
    m[:3, 3] = start
    return m


def _row(value: torch.Tensor, i: int) -> np.ndarray:
    """Row i of a snapshot tensor (M, ...) as float64 numpy."""
    return value[i].detach().cpu().double().numpy()


def _drill_radius(snapshot: EnvSnapshot, i: int) -> float:
    """The drill's radius (m) from the shaft the ultrasound images (`imaged_tools`)."""
    tools = snapshot.imaged_tools
    require(tools is not None, "snapshot.imaged_tools", "the drill shaft (us_surgery's snapshot)", None)
    radius = tools.radius_m
    if isinstance(radius, torch.Tensor):
        return float(radius.reshape(-1)[i if radius.numel() > 1 else 0])
    return float(radius)


class SurgeryDrawing:
    """The planned screw (translucent green), the drill (steel grey) and the drilled channel (its
    grade's colour, hidden before the bit has cut any), on `plotter`'s current viewport; `probe`
    is unused (the play scene draws the image plane)."""

    def __init__(self, plotter: pv.Plotter, probe: ProbeSpec) -> None:
        del probe
        mesh = unit_cylinder()
        self.plan = plotter.add_mesh(mesh, color=PLAN_RGB, opacity=PLAN_OPACITY, smooth_shading=True)
        self.drill = plotter.add_mesh(mesh, color=DRILL_RGB, smooth_shading=True, specular=0.6)
        self.channel = plotter.add_mesh(mesh, color=GRADE_RGB["A"], smooth_shading=True)
        for actor in (self.plan, self.drill, self.channel):
            actor.visibility = False  # until the first frame places them

    def __call__(self, snapshot: EnvSnapshot, i: int) -> str:
        """Place the solids at environment i's state (row i of the snapshot); returns the status
        text: the goal's name, the tip (mm) and angle (deg) errors to the plan, the worst breach
        (mm) and its grade, the drill's thrust (N) and whether the bit is in bone."""
        extras = snapshot.extras
        entry, target = _row(extras["plan_entry"], i), _row(extras["plan_target"], i)
        plan_length, plan_radius = float(np.linalg.norm(target - entry)), float(extras["plan_radius_m"][i])
        self.plan.user_matrix = segment_matrix(entry, target - entry, plan_length, plan_radius)
        drill = pose_matrix(snapshot.tool_poses[DRILL][i])  # the tool frame is the tip, z along the bit
        drill_radius = _drill_radius(snapshot, i)
        tip, bit = drill[:3, 3], drill[:3, 2]
        self.drill.user_matrix = segment_matrix(tip - SHAFT_M * bit, bit, SHAFT_M, drill_radius)
        # The channel runs along the commanded drill's axis (the env drills along it, not along
        # the arm's pose, which lags its target by the arm's tracking error).
        depth = float(extras["channel_depth_m"][i])
        grade = GRADES[int(extras["grade"][i])]
        self.channel.prop.color = GRADE_RGB[grade]
        self.channel.visibility = depth > 0
        if depth > 0:
            axis = pose_matrix(extras["drill_command"][i])[:3, 2]
            start = _row(extras["channel_entry"], i)
            self.channel.user_matrix = segment_matrix(start, axis, depth, CHANNEL_WIDTH * drill_radius)
        self.plan.visibility = self.drill.visibility = True
        tip_mm = float(extras["tip_error_m"][i]) * 1000
        angle_deg = math.degrees(float(extras["angle_error_rad"][i]))
        breach_mm, thrust_n = float(extras["breach_mm"][i]), float(extras["thrust_n"][i])
        bone = "in bone" if bool(extras["in_bone"][i]) else "not in bone"
        return (
            f"goal {extras['goal_name'][i]}  error {tip_mm:5.1f} mm {angle_deg:5.1f} deg  "
            f"breach {breach_mm:4.1f} mm grade {grade}  thrust {thrust_n:5.1f} N  {bone}"
        )
