"""The two-arm scene both backends are tested on (tests/test_two_arm_scene.py on torch,
tests/test_isaaclab_two_arm.py on Isaac Lab): the iiwa holds the ultrasound probe, the Panda a
drill, over one patient."""

from __future__ import annotations

import math

import torch

from sim.backends.protocol import SceneBackend
from sim.backends.scene import SceneCfg, SceneRobotCfg, ToolCfg
from sim.robot.mount import RobotCfg
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_log
from sim.ultrasound.placement import probe_pose_on_skin

DT = 0.1  # s, us_nav's control period (control_hz = 10)
PRESS_M = 0.004  # the probe face 4 mm into the skin: about 8 N at 2 N/mm
DRILL_ABOVE_M = 0.04  # the drill tip 4 cm above the skin
# Start points (x, z) relative to the centre of L3, metres (+x the patient's right, +z superior):
# the drill over the left pedicle region a level below (2 cm left, 8 cm inferior), the probe
# paramedian on the right a level above. 13 cm between the tool axes keeps the two wrists (link
# radii 4.5-6.5 cm, the arms reaching in from opposite sides) clear of each other in a physics scene.
DRILL_START_XZ_M = (-0.02, -0.08)
PROBE_START_XZ_M = (0.05, 0.05)
# Drill pointing down into the body: tool +z along patient +y (anterior), tool +x along +z (superior).
DRILL_ROT = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
# Per environment (4 at most), the directions the probe (x, z) and drill (x, y, z) targets move in.
PROBE_DIRECTIONS = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.5, 0.0], [-math.sqrt(0.5), math.sqrt(0.5)]])
DRILL_DIRECTIONS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])


def iiwa() -> SceneRobotCfg:
    """The iiwa at us_nav's default mount (sim/robot/mount.py: 0.55 m to the patient's right,
    base z up), holding the probe at probe_tip."""
    return SceneRobotCfg.from_robot_cfg("iiwa", RobotCfg(), ToolCfg("probe", "probe", {"stiffness_n_per_m": 2000.0}))


def panda() -> SceneRobotCfg:
    """The Panda beside the table on the patient's left, 0.40 m lateral of the anchor (L3 centre)
    at its height, base z up (patient -y) and base x toward the patient (+x): the drill over the
    left pedicle lies 0.38 m out and 0.13 m up in its base frame. 40 IK iterations bring the drill
    from the ready pose (0.3 m higher) down to its start target."""
    h = math.sqrt(0.5)
    return SceneRobotCfg(
        "panda", "panda", "drill_tip", (-0.40, 0.0, 0.0), (h, h, 0.0, 0.0), ToolCfg("drill", "drill"),
        reset_ik_iterations=40,
    )  # fmt: skip


def two_arm_scene() -> SceneCfg:
    return SceneCfg((iiwa(), panda()), anchor="vertebrae_L3")


def targets(
    scene: SceneBackend, idx: torch.Tensor, probe_xz: torch.Tensor, drill_xyz: torch.Tensor, press_m: float = PRESS_M
) -> dict:
    """Probe on the skin at (x, z) (N, 2), pressed press_m in; drill tip at drill_xyz (N, 3) pointing down."""
    point, normal = scene.skin.query(idx, probe_xz[:, 0], probe_xz[:, 1])
    probe = probe_pose_on_skin(point, normal, torch.zeros(len(idx)), press_m)
    drill = torch.cat([drill_xyz, matrix_to_quat(DRILL_ROT).expand(len(idx), 4)], -1)
    return {"probe": probe, "drill": drill}


def start(scene: SceneBackend, patient, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start points a few mm apart per environment: probe (x, z) and drill tip (x, y, z), 4 cm
    above the skin (see PROBE_START_XZ_M, DRILL_START_XZ_M)."""
    centre = torch.tensor(patient.landmarks["vertebrae_L3"].centre, dtype=torch.float32)
    spread = torch.linspace(-0.005, 0.005, len(idx))
    probe_xz = torch.stack([centre[0] + PROBE_START_XZ_M[0] + spread, centre[2] + PROBE_START_XZ_M[1] - spread], -1)
    x, z = centre[0] + DRILL_START_XZ_M[0] + spread, centre[2] + DRILL_START_XZ_M[1] + spread
    skin, _ = scene.skin.query(idx, x, z)
    drill_xyz = torch.stack([x, skin[:, 1] - DRILL_ABOVE_M, z], -1)  # skin is at -y (posterior, up)
    return probe_xz, drill_xyz


def errors(pose: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) position error (m) and angle error (rad) between poses (N, 7)."""
    rot = quat_to_matrix(target[:, 3:]) @ quat_to_matrix(pose[:, 3:]).transpose(-1, -2)
    return (pose[:, :3] - target[:, :3]).norm(dim=-1), rotation_log(rot).norm(dim=-1)
