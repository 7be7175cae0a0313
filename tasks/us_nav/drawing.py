"""us_nav's layer of the play scene (`sim.viz.play_scene`): the goal plane and the goal's name
and remaining error in the status line (the registry's `drawing`)."""

from __future__ import annotations

import math

import pyvista as pv

from sim.envs.snapshot import EnvSnapshot
from sim.ultrasound.probe import ProbeSpec
from sim.viz.play_scene import IDENTITY_POSE
from sim.viz.scene import image_plane, plane_texture, pose_matrix

GOAL_RGB = (40, 210, 60)


class GoalDrawing:
    """The goal plane: the probe's field of view at the goal pose, translucent green with an
    opaque outline, on `plotter`'s current viewport."""

    def __init__(self, plotter: pv.Plotter, probe: ProbeSpec) -> None:
        self.goal = plotter.add_mesh(
            image_plane(probe, IDENTITY_POSE), texture=plane_texture(probe, GOAL_RGB), lighting=False
        )

    def __call__(self, snapshot: EnvSnapshot, i: int) -> str:
        """Move the goal plane to environment i's goal (row i of the snapshot); returns the
        status text: the goal's name and the position (mm) and angle (deg) errors."""
        self.goal.user_matrix = pose_matrix(snapshot.goal_pose[i])
        extras = snapshot.extras
        error_mm, error_deg = (
            float(extras["position_error_m"][i]) * 1000,
            math.degrees(float(extras["angle_error_rad"][i])),
        )
        return f"goal {extras['goal_name'][i]}  error {error_mm:5.1f} mm {error_deg:5.1f} deg"
