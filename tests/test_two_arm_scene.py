"""Two named arms over one patient on the torch backend (sim.backends.scene, sim.backends.torch.scene):
the iiwa holds the ultrasound probe, the Panda a drill; each tracks its own tool's targets."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sim.anatomy import prepare_patient
from sim.backends.scene import SceneCfg, ToolCfg
from sim.backends.torch.scene import TorchScene
from sim.errors import InputError
from sim.transforms import quat_to_matrix
from tests import two_arms as two
from tests.two_arms import DT, PRESS_M

N = 4


@pytest.fixture(scope="module")
def patient():
    return prepare_patient({"source": "phantom", "seed": 0, "spacing_mm": 2.0}, progress=False)


@pytest.fixture(scope="module")
def scene(patient) -> TorchScene:
    return TorchScene([patient], two.two_arm_scene(), "cpu")


def test_two_arms_track_their_own_tools(scene, patient):
    idx = torch.zeros(N, dtype=torch.long)
    probe_xz, drill_xyz = two.start(scene, patient, idx)
    targets = two.targets(scene, idx, probe_xz, drill_xyz)
    q = scene.place(scene.home(N), idx, targets)
    assert set(q) == {"iiwa", "panda"} and q["iiwa"].shape == (N, 7) and q["panda"].shape == (N, 7)
    poses = scene.tool_poses(q, idx)
    for tool in ("probe", "drill"):
        pos, ang = two.errors(poses[tool], targets[tool])
        assert pos.max() < 1.5e-3 and ang.max() < math.radians(1.5), (tool, pos, ang)
    assert (poses["drill"][:, 1] < scene.skin.query(idx, poses["drill"][:, 0], poses["drill"][:, 2])[0][:, 1]).all()

    # Both targets move 1-2 mm per step for 20 steps, in different directions per tool and env: the
    # probe slides over the skin along the spine (2 mm per step), across it to the right (1 mm: the
    # back curves there, the probe tilts with the skin normal) and diagonally.
    step = 0.002
    probe_dir, drill_dir = two.PROBE_DIRECTIONS, two.DRILL_DIRECTIONS
    q_still = dict(q)  # the same run with a stationary probe target
    still_probe = targets["probe"]
    for k in range(1, 21):
        targets = two.targets(scene, idx, probe_xz + k * step * probe_dir, drill_xyz + k * step * drill_dir)
        q = scene.follow(q, idx, targets, DT)
        q_still = scene.follow(q_still, idx, {"probe": still_probe, "drill": targets["drill"]}, DT)
        poses = scene.tool_poses(q, idx)
        for tool in ("probe", "drill"):
            pos, ang = two.errors(poses[tool], targets[tool])
            assert pos.max() < 2e-3 and ang.max() < math.radians(2.0), (k, tool, pos, ang)
        # The Panda's joints depend on the drill's targets only: moving the probe did not move the drill.
        assert torch.equal(q["panda"], q_still["panda"])
    assert not torch.allclose(q["iiwa"], q_still["iiwa"])

    # Moving only the probe's target leaves the Panda exactly where it was, and the other way round.
    probe_only = scene.follow(q, idx, {"probe": two.targets(scene, idx, probe_xz, drill_xyz)["probe"]}, DT)
    assert torch.equal(probe_only["panda"], q["panda"]) and not torch.equal(probe_only["iiwa"], q["iiwa"])
    drill_only = scene.follow(q, idx, {"drill": targets["drill"] + torch.tensor([0.0, 0.0, 0.01, 0, 0, 0, 0])}, DT)
    assert torch.equal(drill_only["iiwa"], q["iiwa"]) and not torch.equal(drill_only["panda"], q["panda"])
    before, after = scene.tool_poses(q, idx), scene.tool_poses(drill_only, idx)
    assert torch.equal(before["probe"], after["probe"])
    assert (after["drill"][:, 2] - before["drill"][:, 2]).min() > 5e-3


def test_probe_contact_force(scene, patient):
    idx = torch.zeros(N, dtype=torch.long)
    probe_xz, drill_xyz = two.start(scene, patient, idx)
    targets = two.targets(scene, idx, probe_xz, drill_xyz)
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
    iiwa, panda = two.iiwa(), two.panda()
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
