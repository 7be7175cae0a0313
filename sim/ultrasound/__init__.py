"""Simulated ultrasound: probe geometry, tissue acoustics and the batched B-mode renderer."""

from sim.ultrasound.learned import LearnedRenderer
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig, RenderParams
from sim.ultrasound.tissue import TissueTable
from sim.ultrasound.tools import ToolSegments

__all__ = ["LearnedRenderer", "ProbeSpec", "Renderer", "RendererConfig", "RenderParams", "TissueTable", "ToolSegments"]
