"""The sonolab simulator as a robot: environment 0 of a task environment, driven by tool targets.

The runtime's loop drives it exactly as it drives a real robot; for the same seed it reproduces
the trajectory `scripts/play.py` records (environment 0 of a one-environment run). It reads and
drives the environment through the environment contract only (`snapshot`, `drive_tools`); the
episode's `Session` comes from the task's registered `sim_session`.
"""

from __future__ import annotations

import numpy as np
import torch

from policies.deploy.robot import RobotState, Session
from tasks import registry


class SimRobot:
    """`RobotInterface` over a task environment with one environment (the task frame is its
    patient frame), its primary tool as the robot's tool. An episode ends on the task's
    termination or its time limit."""

    def __init__(self, env) -> None:
        self.env, self.done = env, False
        self.session = registry.deployment_part(env.cfg.name, "sim_session")
        self.first = torch.zeros(1, dtype=torch.long, device=env.device)

    def start(self) -> Session:
        self.env.reset()
        self.done = False
        return self.session(self.env)

    def read(self) -> RobotState:
        snapshot = self.env.snapshot(self.first)
        tool, robot = snapshot.tool, snapshot.robot
        frame = snapshot.image[0].cpu().numpy() if snapshot.image is not None else None
        q, pose = snapshot.joint_positions[robot][0].cpu().numpy(), snapshot.tool_poses[tool][0].cpu().numpy()
        return RobotState(q, pose, float(snapshot.tool_forces[tool][0]), frame, self.done)

    @torch.inference_mode()
    def send(self, target: np.ndarray) -> None:
        tool = self.env.snapshot(self.first).tool
        over = self.env.drive_tools(
            {tool: torch.as_tensor(np.asarray(target, np.float32), device=self.env.device)[None]}
        )
        self.done = bool(over[0])

    def stop(self, reason: str) -> None:
        self.done = True
