"""`EnvSnapshot`: what generic tools (viewer, videos, trajectory recorder, simulated robot,
benchmarks) may read of M environments of any task, instead of a task's own attributes.

Every tensor is a copy indexed by the snapshot's environments (dimension 0 is M), on the
environment's device; poses are (x, y, z, qw, qx, qy, qz) in the patient frame, metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sim.ultrasound.tools import ToolSegments


@dataclass
class EnvSnapshot:
    """The state of environments `env_ids` (M,) now.

    patient (M,) int64: index into the env's `patients`; step (M,) int64: control steps into
    the current episode. tool_poses {tool: (M, 7)} of each named tool (e.g. "probe"), and
    tool_forces {tool: (M,)} its contact force in newtons; joint_positions {robot: (M, dof)}
    radians and base_poses {robot: (M, 7)} of each named robot, the first robot holding the
    first tool. goal_pose (M, 7) of the first tool, or None for tasks without a goal pose;
    image (M, H, W) in [0, 1], the newest ultrasound frame, or None without imaging. imaged_tools:
    the metal tools the ultrasound shows (`sim.ultrasound.tools.ToolSegments`, M rows; e.g. a drill),
    passed to any renderer that images these environments, or None. extras: the
    task's own values for its drawing and reports ({name: tensor (M, ...) or list of M items}).
    """

    env_ids: torch.Tensor
    patient: torch.Tensor
    step: torch.Tensor
    tool_poses: dict[str, torch.Tensor]
    tool_forces: dict[str, torch.Tensor]
    joint_positions: dict[str, torch.Tensor]
    base_poses: dict[str, torch.Tensor]
    goal_pose: torch.Tensor | None = None
    image: torch.Tensor | None = None
    imaged_tools: ToolSegments | None = None
    extras: dict = field(default_factory=dict)

    @property
    def tool(self) -> str:
        """The first (primary) tool's name."""
        return next(iter(self.tool_poses))

    @property
    def robot(self) -> str:
        """The first (primary) robot's name: the one holding the primary tool."""
        return next(iter(self.joint_positions))
