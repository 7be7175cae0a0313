"""Visualisation: 3-D scenes of patients, probes and ultrasound images (needs pyvista, `sonolab[viz]`)."""

from sim.viz.scene import build_scene, standard_plane_pose

__all__ = ["build_scene", "standard_plane_pose"]
