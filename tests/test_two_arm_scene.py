"""Two named arms over one patient on the torch backend (sim.backends.scene, sim.backends.torch.scene):
the iiwa holds the ultrasound probe, the Panda a drill; each tracks its own tool's targets."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sim.anatomy import prepare_patient
from sim.backends.scene import SceneCfg, SceneRobotCfg, ToolCfg
from sim.backends.torch.scene import TorchScene
from sim.errors import InputError
from sim.robot.mount import RobotCfg
from sim.transforms import matrix_to_quat, quat_to_matrix, rotation_log
from sim.ultrasound.placement import probe_pose_on_skin

N = 4
DT = 0.1  # s, us_nav's control period (control_hz = 10)
PRESS_M = 0.004  # the probe face 4 mm into the skin: about 8 N at 2 N/mm
DRILL_ABOVE_M = 0.04  # the drill tip 4 cm above the skin
PEDICLE_LEFT_M = 0.02  # the left L3 pedicle region: 2 cm to the patient's left (-x) of the midline
# Drill pointing down into the body: tool +z along patient +y (anterior), tool +x along +z (superior).
DRILL_ROT = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def _iiwa() -> SceneRobotCfg:
    """The iiwa at us_nav's default mount (sim/robot/mount.py: 0.55 m to the patient's right,
    base z up), holding the probe at probe_tip."""
    return SceneRobotCfg.from_robot_cfg("iiwa", RobotCfg(), ToolCfg("probe", "probe", {"stiffness_n_per_m": 2000.0}))


def _panda() -> SceneRobotCfg:
    """The Panda beside the table on the patient's left, 0.40 m lateral of the anchor (L3 centre)
    at its height, base z up (patient -y) and base x toward the patient (+x): the drill over the
    left pedicle lies 0.38 m out and 0.13 m up in its base frame. 40 IK iterations bring the drill
    from the ready pose (0.3 m higher) down to its start target."""
    h = math.sqrt(0.5)
    return SceneRobotCfg(
        "panda",
        "panda",
        "drill_tip",
        (-0.40, 0.0, 0.0),
        (h, h, 0.0, 0.0),
        ToolCfg("drill", "drill"),
        reset_ik_iterations=40,
    )


@pytest.fixture(scope="module")
def patient():
    return prepare_patient({"source": "phantom", "seed": 0, "spacing_mm": 2.0}, progress=False)


@pytest.fixture(scope="module")
def scene(patient) -> TorchScene:
    return TorchScene([patient], SceneCfg((_iiwa(), _panda()), anchor="vertebrae_L3"), "cpu")


def _targets(scene: TorchScene, idx: torch.Tensor, probe_xz: torch.Tensor, drill_xyz: torch.Tensor) -> dict:
    """Probe on the skin at (x, z) (N, 2), pressed PRESS_M in; drill tip at drill_xyz (N, 3) pointing down."""
    point, normal = scene.skin.query(idx, probe_xz[:, 0], probe_xz[:, 1])
    probe = probe_pose_on_skin(point, normal, torch.zeros(len(idx)), PRESS_M)
    drill = torch.cat([drill_xyz, matrix_to_quat(DRILL_ROT).expand(len(idx), 4)], -1)
    return {"probe": probe, "drill": drill}


def _start(scene: TorchScene, patient, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start points over L3, a few mm apart per environment: probe (x, z) and drill tip (x, y, z)."""
    centre = torch.tensor(patient.landmarks["vertebrae_L3"].centre, dtype=torch.float32)
    spread = torch.linspace(-0.005, 0.005, len(idx))
    probe_xz = torch.stack([centre[0] + spread, centre[2] - spread], -1)
    x, z = centre[0] - PEDICLE_LEFT_M + spread, centre[2] + spread
    skin, _ = scene.skin.query(idx, x, z)
    drill_xyz = torch.stack([x, skin[:, 1] - DRILL_ABOVE_M, z], -1)  # skin is at -y (posterior, up)
    return probe_xz, drill_xyz


def _errors(pose: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) position error (m) and angle error (rad) between poses (N, 7)."""
    rot = quat_to_matrix(target[:, 3:]) @ quat_to_matrix(pose[:, 3:]).transpose(-1, -2)
    return (pose[:, :3] - target[:, :3]).norm(dim=-1), rotation_log(rot).norm(dim=-1)


def test_two_arms_track_their_own_tools(scene, patient):
    idx = torch.zeros(N, dtype=torch.long)
    probe_xz, drill_xyz = _start(scene, patient, idx)
    targets = _targets(scene, idx, probe_xz, drill_xyz)
    q = scene.place(scene.home(N), idx, targets)
    assert set(q) == {"iiwa", "panda"} and q["iiwa"].shape == (N, 7) and q["panda"].shape == (N, 7)
    poses = scene.tool_poses(q, idx)
    for tool in ("probe", "drill"):
        pos, ang = _errors(poses[tool], targets[tool])
        assert pos.max() < 1.5e-3 and ang.max() < math.radians(1.5), (tool, pos, ang)
    assert (poses["drill"][:, 1] < scene.skin.query(idx, poses["drill"][:, 0], poses["drill"][:, 2])[0][:, 1]).all()

    # Both targets move 1-2 mm per step for 20 steps, in different directions per tool and env: the
    # probe slides over the skin along the spine (2 mm per step), across it to the right (1 mm: the
    # back curves there, the probe tilts with the skin normal) and diagonally.
    step = 0.002
    probe_dir = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.5, 0.0], [-math.sqrt(0.5), math.sqrt(0.5)]])
    drill_dir = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
    q_still = dict(q)  # the same run with a stationary probe target
    still_probe = targets["probe"]
    for k in range(1, 21):
        targets = _targets(scene, idx, probe_xz + k * step * probe_dir, drill_xyz + k * step * drill_dir)
        q = scene.follow(q, idx, targets, DT)
        q_still = scene.follow(q_still, idx, {"probe": still_probe, "drill": targets["drill"]}, DT)
        poses = scene.tool_poses(q, idx)
        for tool in ("probe", "drill"):
            pos, ang = _errors(poses[tool], targets[tool])
            assert pos.max() < 2e-3 and ang.max() < math.radians(2.0), (k, tool, pos, ang)
        # The Panda's joints depend on the drill's targets only: moving the probe did not move the drill.
        assert torch.equal(q["panda"], q_still["panda"])
    assert not torch.allclose(q["iiwa"], q_still["iiwa"])

    # Moving only the probe's target leaves the Panda exactly where it was, and the other way round.
    probe_only = scene.follow(q, idx, {"probe": _targets(scene, idx, probe_xz, drill_xyz)["probe"]}, DT)
    assert torch.equal(probe_only["panda"], q["panda"]) and not torch.equal(probe_only["iiwa"], q["iiwa"])
    drill_only = scene.follow(q, idx, {"drill": targets["drill"] + torch.tensor([0.0, 0.0, 0.01, 0, 0, 0, 0])}, DT)
    assert torch.equal(drill_only["iiwa"], q["iiwa"]) and not torch.equal(drill_only["panda"], q["panda"])
    before, after = scene.tool_poses(q, idx), scene.tool_poses(drill_only, idx)
    assert torch.equal(before["probe"], after["probe"])
    assert (after["drill"][:, 2] - before["drill"][:, 2]).min() > 5e-3


def test_probe_contact_force(scene, patient):
    idx = torch.zeros(N, dtype=torch.long)
    probe_xz, drill_xyz = _start(scene, patient, idx)
    targets = _targets(scene, idx, probe_xz, drill_xyz)
    q = scene.place(scene.home(N), idx, targets)
    contacts = scene.contacts(idx, scene.tool_poses(q, idx))
    force = {tool: c.force_n for tool, c in contacts.items()}
    assert set(force) == {"probe"} and force["probe"].shape == (N,)  # the drill has no skin contact
    assert torch.isfinite(force["probe"]).all() and (force["probe"] > 0).all()
    assert torch.allclose(force["probe"], torch.full((N,), 2000.0 * PRESS_M), atol=1.5)  # 2 N/mm x 4 mm
    # Lifted 1 cm off the skin along its beam, the probe feels nothing.
    lifted = targets["probe"].clone()
    lifted[:, :3] -= 0.01 * quat_to_matrix(lifted[:, 3:])[:, :, 2]
    q = scene.place(q, idx, {"probe": lifted})
    assert (scene.contacts(idx, scene.tool_poses(q, idx))["probe"].force_n == 0).all()


def test_bad_scene_configs_name_the_field(scene):
    iiwa, panda = _iiwa(), _panda()
    with pytest.raises(InputError, match=r"scene\.robots\[\]\.name.*\['iiwa'\]"):
        SceneCfg((iiwa, dataclasses.replace(panda, name="iiwa")))
    with pytest.raises(InputError, match=r"scene\.robots\[\]\.tool\.name.*\['probe'\]"):
        SceneCfg((iiwa, dataclasses.replace(panda, tool=ToolCfg("probe", "drill"))))
    with pytest.raises(InputError, match="base_quat_wxyz.*unit quaternion"):
        dataclasses.replace(panda, base_quat_wxyz=(1.0, 1.0, 0.0, 0.0))
    with pytest.raises(InputError, match="base_position_m"):
        dataclasses.replace(panda, base_position_m=(float("nan"), 0.0, 0.0))
    with pytest.raises(InputError, match="kind"):
        ToolCfg("saw", "saw")
    with pytest.raises(InputError, match="params"):
        ToolCfg("probe", "probe", {"stiffness_n_per_m": -1.0})
    with pytest.raises(InputError, match="scene.robots"):
        SceneCfg(())
    with pytest.raises(InputError, match="robot 'panda'.*drill_tipp"):
        TorchScene([], SceneCfg((dataclasses.replace(panda, tool_frame="drill_tipp"),)), "cpu")
    q = scene.home(2)
    idx = torch.zeros(2, dtype=torch.long)
    with pytest.raises(InputError, match="unknown tools.*saw"):
        scene.follow(q, idx, {"saw": torch.zeros(2, 7)}, DT)
    with pytest.raises(InputError, match="q: expected joint angles for robots"):
        scene.tool_poses({"iiwa": q["iiwa"]}, idx)
