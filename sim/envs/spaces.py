"""Declared observation and action spaces: what a task's tensors hold, stated without stepping.

A `Space` is the per-environment shape of one observation group or of the actions (the batch
dimension left out) and, along its first axis (vector elements, image channels), `Segment`s:
consecutive runs of elements with one meaning, bounds and unit. Adapters build their libraries'
spaces from it (`sim.envs.adapters.gymnasium`); export and deploy can describe inputs with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.errors import require


@dataclass(frozen=True)
class Segment:
    """`size` consecutive elements (along a space's first axis) with one meaning.

    low / high: bounds of every value (+-inf: unbounded). unit and scale: a value v stands for
    v * scale in `unit` ("1": dimensionless or normalised, with scale 1), e.g. an action in
    [-1, 1] with scale 0.005 and unit "m" moves up to 5 mm.
    """

    name: str
    size: int
    low: float = -math.inf
    high: float = math.inf
    unit: str = "1"
    scale: float = 1.0


@dataclass(frozen=True)
class Space:
    """float32 values per environment of shape `shape` (no batch dimension); `segments` describe
    the first axis in order, their sizes adding up to shape[0]."""

    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        sizes = [s.size for s in self.segments]
        require(
            len(self.shape) >= 1 and sum(sizes) == self.shape[0],
            "space segments",
            f"sizes adding up to shape[0] of {self.shape}",
            sizes,
        )

    @classmethod
    def vector(cls, *segments: Segment) -> Space:
        """The (D,) space of `segments` laid end to end."""
        return cls((sum(s.size for s in segments),), tuple(segments))

    @property
    def names(self) -> tuple[str, ...]:
        """One name per element of the first axis: the segment's name, indexed when it has several."""
        return tuple(s.name if s.size == 1 else f"{s.name}[{i}]" for s in self.segments for i in range(s.size))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) float32 arrays of `shape`: each segment's bounds over its elements."""
        low = np.concatenate([np.full(s.size, s.low, np.float32) for s in self.segments])
        high = np.concatenate([np.full(s.size, s.high, np.float32) for s in self.segments])
        tail = (1,) * (len(self.shape) - 1)
        return np.broadcast_to(low.reshape(-1, *tail), self.shape).copy(), np.broadcast_to(
            high.reshape(-1, *tail), self.shape
        ).copy()
