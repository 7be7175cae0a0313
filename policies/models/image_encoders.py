"""`ImageEncoderModel`: rsl-rl's `CNNModel` with image encoders of sonolab's own in its CNN slot.

A subclass names the keyword of its encoder settings (`settings_key`), what they hold
(`settings_expected`) and the encoder class (`encoder`, built as encoder(input_shape, **settings)
for each 2-D group); the 1-D groups, the MLP head, the distribution and the export are CNNModel's.
"""

from __future__ import annotations

import contextlib
import io

from rsl_rl.models import CNNModel
from tensordict import TensorDict
from torch import nn

from sim.errors import InputError


class ImageEncoderModel(CNNModel):
    """CNNModel whose 2-D groups are read by `encoder`; arguments: those of `CNNModel`, plus the
    subclass's settings keyword (cnn_cfg, when it is not that keyword, is not used)."""

    settings_key: str
    settings_expected: str
    encoder: type[nn.Module]

    def __init__(
        self,
        obs: TensorDict,
        obs_groups: dict[str, list[str]],
        obs_set: str,
        output_dim: int,
        *args,
        cnns: nn.ModuleDict | dict[str, nn.Module] | None = None,
        **kwargs,
    ) -> None:
        settings = kwargs.pop(self.settings_key, None)
        kwargs.pop("cnn_cfg", None)  # Isaac Lab's CNN config class always carries one
        if cnns is None:
            if settings is None:
                raise InputError(f"agent.actor.{self.settings_key}: expected {self.settings_expected}, got none")
            groups = [g for g in obs_groups[obs_set] if obs[g].dim() == 4]
            cnns = {g: self.encoder(tuple(obs[g].shape[1:]), **settings) for g in groups}
        # CNNModel announces on stdout that it was handed encoders; here they are its own.
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(obs, obs_groups, obs_set, output_dim, *args, cnns=cnns, **kwargs)
