"""Robot readings as the tensors a task's observation terms take (the robot-side controllers' shared part)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from policies.deploy.robot import RobotState
from sim.errors import require


def batch_row(x) -> torch.Tensor:
    """A float32 tensor (a copy) of x with a leading batch dimension of one."""
    return torch.from_numpy(np.array(x, np.float32))[None]


def policy_frame(state: RobotState, size: int, planes: int = 1) -> torch.Tensor:
    """(1, 1, size, planes * size) float32: the robot's ultrasound frame resized (area averaging)
    to an image policy's side of `size` pixels per plane; a biplane probe's frame (planes = 2) holds
    its two planes side by side, each as wide as it is deep. InputError when the state carries no
    frame."""
    require(state.frame is not None, "robot state frame", "an ultrasound frame for this image policy", None)
    frame = np.asarray(state.frame, np.float32)
    if frame.shape != (size, planes * size):
        frame = cv2.resize(frame, (planes * size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(frame))[None, None]
