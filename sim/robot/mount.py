"""`RobotCfg`: which arm holds the probe, where it stands beside the patient, how it tracks targets."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RobotCfg:
    """The probe-holding arm (Hydra: `task.robot.*`).

    name: a URDF under assets/robots ("iiwa14", "panda") or a path. tool_frame: the link whose
    pose is the probe face. base_position_m / base_quat_wxyz: the base pose in the anchor frame
    (the patient frame shifted so the anchor vertebra's centre is the origin), so one placement
    suits every patient; the default stands beside the patient's right side (+x), base z along
    patient -y (up for a prone patient). reset_ik_iterations: DLS iterations that place the arm
    at a new episode's start pose. substeps: DLS steps per control step, each moving every joint
    by at most its velocity limit x dt / substeps. damping: DLS lambda. stiffness_n_per_m: skin
    stiffness of the contact model.
    """

    name: str = "iiwa14"
    tool_frame: str = "probe_tip"
    base_position_m: tuple[float, float, float] = (0.55, 0.0, 0.0)
    base_quat_wxyz: tuple[float, float, float, float] = (0.0, 0.0, math.sqrt(0.5), -math.sqrt(0.5))
    reset_ik_iterations: int = 10
    substeps: int = 2
    damping: float = 0.05
    stiffness_n_per_m: float = 2000.0
