"""The sonolab simulator as a robot: environment 0 of a task environment, driven by tool targets.

The runtime's loop drives it exactly as it drives a real robot; for the same seed it reproduces
the trajectory `scripts/play.py` records (environment 0 of a one-environment run) where the
task's tool targets move the tool as its actions do (us_nav). It reads and drives the
environment through the environment contract only (`snapshot`, `drive_tools`); the episode's
`Session` comes from the task's registered `sim_session`. A task whose robot holds another tool
than the snapshot's primary one, or reports more, subclasses `SimRobot` (`tool`, `reading`) and
registers it (`tasks.registry.TaskSpec.sim_robot`).
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

    tool: str | None = None  # the environment tool the robot's targets drive; None: the snapshot's primary tool

    def __init__(self, env) -> None:
        self.env, self.done = env, False
        self.session = registry.deployment_part(env.cfg.name, "sim_session")
        self.first = torch.zeros(1, dtype=torch.long, device=env.device)

    def start(self) -> Session:
        self.env.reset()
        self.done = False
        return self.session(self.env)

    def read(self) -> RobotState:
        return self.reading(self.env.snapshot(self.first), self.done)

    @classmethod
    def reading(cls, snapshot, done: bool = False) -> RobotState:
        """The robot's state in the first environment of an `EnvSnapshot` (what the robot reports;
        play.py's trajectory records it too): the primary robot's joint angles, its tool's pose and
        contact force and the newest image."""
        tool, robot = snapshot.tool, snapshot.robot
        frame = snapshot.image[0].cpu().numpy() if snapshot.image is not None else None
        q, pose = snapshot.joint_positions[robot][0].cpu().numpy(), snapshot.tool_poses[tool][0].cpu().numpy()
        return RobotState(q, pose, float(snapshot.tool_forces[tool][0]), frame, done)

    @torch.inference_mode()
    def send(self, target: np.ndarray) -> None:
        tool = self.tool or self.env.snapshot(self.first).tool
        over = self.env.drive_tools(
            {tool: torch.as_tensor(np.asarray(target, np.float32), device=self.env.device)[None]}
        )
        self.done = bool(over[0])

    def stop(self, reason: str) -> None:
        self.done = True
