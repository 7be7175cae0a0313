"""The torch backend (embedded default): kinematic arms, quasi-static contact, no physics engine."""

from sim.backends.torch.scene import TorchScene

__all__ = ["TorchScene"]
