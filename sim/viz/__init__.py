"""Visualisation: 3-D scenes of patients, probes and ultrasound images."""

from sim.viz.scene import build_scene

__all__ = ["build_scene"]
