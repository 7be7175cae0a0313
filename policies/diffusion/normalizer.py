"""The diffusion policy's normalisation: the dataset statistics as buffers, so checkpoints carry them.

- state: z-scored, (x - mean) / max(std, STATE_STD_FLOOR). The floor (state units) keeps a
  feature the demonstrations held constant finite: it normalises to 0, and a drift d of it at
  deployment reads as d / STATE_STD_FLOOR, a bounded (not infinite) amplification.
- actions: min-max to [-1, 1], the range DDIM's clip_sample assumes. A dimension whose range
  max - min is below ACTION_RANGE_FLOOR (action units) counts as constant: it normalises to 0 and
  unnormalises to its constant whatever the network outputs, so the policy never moves a
  dimension the demonstrations never moved.
- images: from [0, 1] to [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sim.errors import InputError, require, require_int

STATE_STD_FLOOR = 1e-2
ACTION_RANGE_FLOOR = 1e-4


def stat_vector(value: object, what: str, length: int | None = None) -> np.ndarray:
    """`value` (numpy, tensor or sequence) as a 1-D float64 array of finite numbers, of `length`
    entries when given; InputError naming `what` otherwise."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}: expected a 1-D array of numbers, got {type(value).__name__}") from err
    expected = f"a 1-D array of {length if length is not None else 'one or more'} numbers"
    require(array.ndim == 1 and array.size >= 1 and length in (None, array.size), what, expected, array.shape)
    require(bool(np.isfinite(array).all()), what, "finite numbers", array)
    return array


class Normalizer(nn.Module):
    """State, action and image normalisation; identity statistics until `set_stats`.

    Buffers (saved in the state_dict): state_mean, state_scale (state_dim,) in state units;
    action_center, action_scale (action_dim,) in action units, action_scale being half the range
    (0 for a constant dimension).
    """

    def __init__(self, state_dim: int, action_dim: int) -> None:
        super().__init__()
        state_dim = require_int(state_dim, "state_dim", 1)
        action_dim = require_int(action_dim, "action_dim", 1)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_scale", torch.ones(state_dim))
        self.register_buffer("action_center", torch.zeros(action_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))

    @classmethod
    def from_stats(cls, state_mean: object, state_std: object, action_min: object, action_max: object) -> Normalizer:
        """A normaliser for the dataset statistics: state mean and standard deviation (D,), action
        minimum and maximum (A,) per dimension (numpy arrays, tensors or sequences)."""
        state_dim = len(stat_vector(state_mean, "state_mean"))
        normalizer = cls(state_dim, len(stat_vector(action_min, "action_min")))
        normalizer.set_stats(state_mean, state_std, action_min, action_max)
        return normalizer

    def set_stats(self, state_mean: object, state_std: object, action_min: object, action_max: object) -> None:
        """Replace the statistics in place (the buffers keep their device); shapes as in `from_stats`."""
        state_dim, action_dim = len(self.state_mean), len(self.action_center)
        mean = stat_vector(state_mean, "state_mean", state_dim)
        std = stat_vector(state_std, "state_std", state_dim)
        require(bool((std >= 0).all()), "state_std", "standard deviations >= 0", std)
        low = stat_vector(action_min, "action_min", action_dim)
        high = stat_vector(action_max, "action_max", action_dim)
        require(bool((high >= low).all()), "action_max", f"at least action_min {low}", high)
        half_range = (high - low) / 2
        self.state_mean.copy_(torch.from_numpy(mean))
        self.state_scale.copy_(torch.from_numpy(np.maximum(std, STATE_STD_FLOOR)))
        self.action_center.copy_(torch.from_numpy((high + low) / 2))
        self.action_scale.copy_(torch.from_numpy(np.where(high - low >= ACTION_RANGE_FLOOR, half_range, 0.0)))

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """(..., state_dim) state units -> (..., state_dim) z-scores."""
        return (state - self.state_mean) / self.state_scale

    def normalize_action(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., action_dim) action units -> (..., action_dim), in [-1, 1] over the dataset (0 on constant dims)."""
        inverse = torch.where(self.action_scale > 0, self.action_scale.reciprocal(), 0.0)
        return (actions - self.action_center) * inverse

    def unnormalize_action(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., action_dim) normalised -> (..., action_dim) action units (the constant on constant dimensions)."""
        return actions * self.action_scale + self.action_center

    @staticmethod
    def normalize_image(images: torch.Tensor) -> torch.Tensor:
        """Images with intensities in [0, 1] -> [-1, 1], same shape."""
        return images * 2 - 1
