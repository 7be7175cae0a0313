"""A CNN actor that compares the current ultrasound images with the goal image.

rsl-rl's `CNNModel` encodes the whole image stack (history + goal) as channels of one input:
its first convolution can weigh goal pixels against current pixels, but nothing makes it
compare them, and with few patients it learns instead which pose each goal image belongs to.
`FrameComparator` encodes every frame with one shared encoder, so the goal and the current
image land in the same feature space, then combines them as features (each frame, goal x
newest, goal - newest) in a fusion convolution: the policy sees where and how the two images
differ. `ComparingCNNModel` is `CNNModel` with a comparator per 2-D group, chosen in the agent
config by `class_name: policies.models.comparing:ComparingCNNModel`; its `cnn_cfg` is
rsl-rl's CNN config for the per-frame encoder.
"""

from __future__ import annotations

import torch
from rsl_rl.modules import CNN
from rsl_rl.utils import resolve_nn_activation
from torch import nn

from policies.models.image_encoders import ImageEncoderModel
from sim.errors import InputError


class FrameComparator(nn.Module):
    """(B, F, H, W) image stacks (frames newest first, the goal image last) -> (B, output_dim).

    input_shape: (F, H, W), F >= 2. cnn_cfg: rsl-rl `CNN` settings of the per-frame encoder
    (its flatten setting is ignored: the fusion needs the feature maps). The fusion is a 1 x 1
    convolution to twice the encoder's channels, with the encoder's activation, then flattened:
    it compares goal and current features where they are (each feature already sees a patch of
    the image; a 3 x 3 fusion made us_nav's PPO iterations 9.6 s of learning instead of 6.3 s
    on the 2-core CPU of BENCHMARKS.md).
    """

    output_channels = None  # flattened output, as rsl-rl's CNNModel requires

    def __init__(self, input_shape: tuple[int, int, int], **cnn_cfg) -> None:
        super().__init__()
        frames, height, width = input_shape
        if frames < 2:
            raise InputError(f"comparing model input frames: expected at least 2 (images and a goal), got {frames}")
        cnn_cfg = {k: v for k, v in cnn_cfg.items() if k != "flatten"}
        self.encoder = CNN((height, width), 1, flatten=False, **cnn_cfg)
        channels = int(self.encoder.output_channels)
        h, w = self.encoder.output_dim
        self.fusion = nn.Sequential(
            nn.Conv2d((frames + 2) * channels, 2 * channels, 1),
            resolve_nn_activation(cnn_cfg.get("activation", "elu")),
            nn.Flatten(),
        )
        self.output_dim = 2 * channels * h * w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, f, h, w = images.shape
        features = self.encoder(images.reshape(b * f, 1, h, w))
        features = features.reshape(b, f, *features.shape[1:])
        newest, goal = features[:, 0], features[:, -1]
        combined = torch.cat([features.flatten(1, 2), goal * newest, goal - newest], 1)
        return self.fusion(combined)


class ComparingCNNModel(ImageEncoderModel):
    """rsl-rl's `CNNModel` with a `FrameComparator` (configured by cnn_cfg) for each 2-D group;
    the 1-D groups and the MLP head are CNNModel's. Arguments: those of `CNNModel`."""

    settings_key = "cnn_cfg"
    settings_expected = "the per-frame encoder's CNN settings"
    encoder = FrameComparator
