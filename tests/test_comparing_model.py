"""ComparingCNNModel: one encoder for every frame, the goal compared with the newest image."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from policies.models.comparing import ComparingCNNModel, FrameComparator
from sim.errors import InputError

CNN = {"output_channels": [4, 8], "kernel_size": [4, 3], "stride": [2, 2], "activation": "elu", "flatten": True}


def model(frames: int = 3) -> ComparingCNNModel:
    obs = TensorDict({"policy": torch.zeros(2, 10), "image": torch.zeros(2, frames, 16, 16)}, batch_size=[2])
    torch.manual_seed(0)
    return ComparingCNNModel(obs, {"actor": ["policy", "image"]}, "actor", 5, hidden_dims=[32], cnn_cfg=CNN)


def test_the_goal_and_the_newest_frame_share_one_encoder_and_are_compared():
    comparator = model().cnns["image"]
    assert isinstance(comparator, FrameComparator) and comparator.output_dim == 16 * 3 * 3
    images = torch.rand(2, 3, 16, 16)
    swapped = images[:, [2, 1, 0]]  # goal and newest frame exchanged: the difference changes sign
    assert not torch.allclose(comparator(images), comparator(swapped))
    assert comparator.encoder[0].in_channels == 1  # one frame at a time: the same weights for every frame


def test_the_exported_actor_is_the_trained_one():
    actor = model()
    obs = TensorDict({"policy": torch.rand(2, 10), "image": torch.rand(2, 3, 16, 16)}, batch_size=[2])
    actor.eval()
    exported = actor.as_onnx()
    assert torch.allclose(exported(obs["policy"], obs["image"]), actor(obs), atol=1e-6)


def test_a_stack_without_a_goal_or_a_config_is_refused():
    with pytest.raises(InputError, match="comparing model input frames: expected at least 2"):
        model(frames=1)
    obs = TensorDict({"image": torch.zeros(2, 3, 16, 16)}, batch_size=[2])
    with pytest.raises(InputError, match="agent.actor.cnn_cfg"):
        ComparingCNNModel(obs, {"actor": ["image"]}, "actor", 5)
