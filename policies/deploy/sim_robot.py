"""The sonolab simulator as a robot: environment 0 of a task environment, driven by probe targets.

The runtime's loop drives it exactly as it drives a real robot; for the same seed it reproduces
the trajectory `scripts/play.py` records (environment 0 of a one-environment run).
"""

from __future__ import annotations

import numpy as np
import torch

from policies.deploy.robot import RobotState, Session


class SimRobot:
    """`RobotInterface` over a us_nav environment with one environment (the task frame is its
    patient frame). An episode ends on the task's success or its time limit."""

    def __init__(self, env) -> None:
        self.env, self.done = env, False

    def start(self) -> Session:
        env = self.env
        env.reset()
        self.done = False
        p, g = int(env.patient_idx[0]), int(env.goal_idx[0])
        skin = env.patients[p].skin
        surface = {"x0": skin.x0, "z0": skin.z0, "dx": skin.dx, "dz": skin.dz, "y": skin.y, "normal": skin.normal}
        images = env.renderer is not None
        return Session(
            anchor_m=env.backend.anchor[p].cpu().numpy(),
            surface=surface,
            goal_pose=env.goal_pose[0].cpu().numpy(),
            goal_image=env.goal_images[p, g].cpu().numpy() if images else None,
            start_command=(env.xz[0].cpu().numpy(), float(env.yaw[0]), env.tilt[0].cpu().numpy()),
        )

    def read(self) -> RobotState:
        env = self.env
        frame = env.history[0, 0].cpu().numpy() if env.renderer is not None else None
        return RobotState(env.q[0].cpu().numpy(), env.poses[0].cpu().numpy(), float(env.force[0]), frame, self.done)

    @torch.inference_mode()
    def send(self, target: np.ndarray) -> None:
        env = self.env
        env.drive(torch.as_tensor(np.asarray(target, np.float32), device=env.device)[None])
        env.episode_length_buf += 1
        _, success, _ = env._evaluate()  # the task's own success test (hold counter, tolerances)
        self.done = bool(success[0]) or int(env.episode_length_buf[0]) >= env.max_episode_length

    def stop(self, reason: str) -> None:
        self.done = True
