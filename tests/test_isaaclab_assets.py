"""The Isaac Lab backend's USD writers (structure only; no simulation): sim/backends/isaaclab/assets.py."""

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pxr", reason="OpenUSD (pxr) comes with the isaac extra (Python 3.12: pip install -e '.[isaac]')")
import trimesh  # noqa: E402
from pxr import Gf, Usd, UsdGeom, UsdPhysics  # noqa: E402

from sim.backends.isaaclab.assets import body_usd, robot_usd, tool_offset  # noqa: E402
from sim.errors import InputError  # noqa: E402

ROBOTS = Path(__file__).resolve().parents[1] / "assets" / "robots"
IIWA = ROBOTS / "iiwa14.urdf"


def _urdf(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _bodies(stage: Usd.Stage) -> dict[str, Usd.Prim]:
    return {p.GetName(): p for p in stage.Traverse() if p.HasAPI(UsdPhysics.RigidBodyAPI)}


def _quat(q) -> np.ndarray:
    """Gf quaternion -> (3, 3) rotation."""
    return np.array(Gf.Matrix3d(Gf.Rotation(Gf.Quatd(q.GetReal(), *q.GetImaginary()))).GetTranspose())


def _rx(a: float) -> np.ndarray:
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _ry(a: float) -> np.ndarray:
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _rz(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def test_robot_bodies_masses_and_tool_frame(tmp_path):
    path = robot_usd(IIWA, tmp_path)
    assert (
        path.name == "iiwa14.usda"
        and path.parent.name.startswith("iiwa14-")
        and len(path.parent.name) == len("iiwa14-") + 12
    )
    stage = Usd.Stage.Open(str(path))
    root = stage.GetDefaultPrim()
    assert root.GetPath() == "/iiwa14" and root.HasAPI(UsdPhysics.ArticulationRootAPI)
    bodies = _bodies(stage)
    assert set(bodies) == {f"iiwa_link_{i}" for i in range(8)} | {"iiwa_probe"}
    assert all(p.GetParent() == root for p in bodies.values())
    urdf = _urdf(IIWA)
    for link in urdf.findall("link"):
        if link.find("inertial") is None:  # massless frames are Xforms, not bodies
            assert link.get("name") not in bodies
            continue
        mass = UsdPhysics.MassAPI(bodies[link.get("name")])
        assert mass.GetMassAttr().Get() == pytest.approx(float(link.find("inertial/mass").get("value")))
        com = [float(v) for v in link.find("inertial/origin").get("xyz").split()]
        assert np.allclose(mass.GetCenterOfMassAttr().Get(), com)
    # colliders: one per link with CollisionAPI, none on the visuals
    probe = bodies["iiwa_probe"]
    assert probe.GetChild("collision_0").HasAPI(UsdPhysics.CollisionAPI)
    assert not probe.GetChild("visual_0").HasAPI(UsdPhysics.CollisionAPI)
    # the massless tool frame sits in the probe body at the URDF offset
    tip = stage.GetPrimAtPath("/iiwa14/iiwa_probe/probe_tip")
    assert tip.IsValid() and not tip.HasAPI(UsdPhysics.RigidBodyAPI)
    local = UsdGeom.Xformable(tip).GetLocalTransformation()
    assert np.allclose(local.ExtractTranslation(), [0, 0, 0.12])
    xyz, quat = tool_offset(IIWA, "iiwa_probe", "probe_tip")
    assert np.allclose(xyz, [0, 0, 0.12]) and np.allclose(quat, [1, 0, 0, 0])
    xyz, quat = tool_offset(IIWA, "iiwa_link_7", "probe_tip")  # through the flange and the probe mount
    assert np.allclose(xyz, [0, 0, 0.165]) and np.allclose(np.abs(quat), [math.sqrt(0.5), 0, 0, math.sqrt(0.5)])
    with pytest.raises(InputError, match="iiwa_link_6"):
        tool_offset(IIWA, "iiwa_link_6", "probe_tip")  # a revolute joint lies between


def test_robot_joints_limits_in_degrees_and_consistent_frames(tmp_path):
    stage = Usd.Stage.Open(str(robot_usd(IIWA, tmp_path)))
    cache = UsdGeom.XformCache()
    revolute = {j.get("name"): j for j in _urdf(IIWA).findall("joint") if j.get("type") == "revolute"}
    joints = {p.GetName(): p for p in stage.Traverse() if p.IsA(UsdPhysics.Joint)}
    assert set(joints) == set(revolute) | {"root_joint", "iiwa_probe_mount"}
    assert joints["root_joint"].IsA(UsdPhysics.FixedJoint) and joints["iiwa_probe_mount"].IsA(UsdPhysics.FixedJoint)
    assert UsdPhysics.Joint(joints["iiwa_probe_mount"]).GetBody0Rel().GetTargets() == ["/iiwa14/iiwa_link_7"]
    for name, prim in joints.items():
        joint = UsdPhysics.Joint(prim)
        b0, b1 = (stage.GetPrimAtPath(r.GetTargets()[0]) for r in (joint.GetBody0Rel(), joint.GetBody1Rel()))
        # at rest both bodies agree on where the joint frame is
        frames = []
        sides = (
            (b0, joint.GetLocalPos0Attr(), joint.GetLocalRot0Attr()),
            (b1, joint.GetLocalPos1Attr(), joint.GetLocalRot1Attr()),
        )
        for body, pos, rot in sides:
            world = np.array(cache.GetLocalToWorldTransform(body)).T
            frames.append(
                world[:3, :3] @ np.column_stack([_quat(rot.Get()), pos.Get()]) + np.c_[np.zeros((3, 3)), world[:3, 3]]
            )
        assert np.allclose(frames[0], frames[1], atol=1e-6), name
        if name not in revolute:
            continue
        rev = UsdPhysics.RevoluteJoint(prim)
        limit = revolute[name].find("limit")
        assert rev.GetLowerLimitAttr().Get() == pytest.approx(math.degrees(float(limit.get("lower"))), abs=1e-4)
        assert rev.GetUpperLimitAttr().Get() == pytest.approx(math.degrees(float(limit.get("upper"))), abs=1e-4)
        assert UsdPhysics.DriveAPI(prim, "angular").GetMaxForceAttr().Get() == pytest.approx(float(limit.get("effort")))
        # the USD axis, seen from the parent body, is the URDF axis seen from the parent link
        axis = np.eye(3)["XYZ".index(rev.GetAxisAttr().Get())]
        urdf_axis = np.array([float(v) for v in revolute[name].find("axis").get("xyz").split()])
        assert np.allclose(_quat(rev.GetLocalRot1Attr().Get()) @ axis, urdf_axis, atol=1e-6), name


def test_robot_inertia_principal_axes(tmp_path):
    """The Panda's inertial frames are rotated: principal moments and axes rebuild the URDF tensor."""
    urdf = ROBOTS / "panda.urdf"
    stage = Usd.Stage.Open(str(robot_usd(urdf, tmp_path)))
    bodies = _bodies(stage)
    for link in _urdf(urdf).findall("link"):
        inertial = link.find("inertial")
        if inertial is None:
            continue
        i = {k: float(v) for k, v in inertial.find("inertia").attrib.items()}
        tensor = np.array(
            [[i["ixx"], i["ixy"], i["ixz"]], [i["ixy"], i["iyy"], i["iyz"]], [i["ixz"], i["iyz"], i["izz"]]]
        )
        r, p, y = (float(v) for v in inertial.find("origin").get("rpy").split())
        rot = _rz(y) @ _ry(p) @ _rx(r)  # URDF rpy
        mass = UsdPhysics.MassAPI(bodies[link.get("name")])
        axes = _quat(mass.GetPrincipalAxesAttr().Get())
        got = axes @ np.diag(mass.GetDiagonalInertiaAttr().Get()) @ axes.T
        assert np.allclose(got, rot @ tensor @ rot.T, atol=1e-7), link.get("name")


def test_robot_cache_reuse_and_invalidation(tmp_path):
    first = robot_usd(IIWA, tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert robot_usd(IIWA, tmp_path / "cache") == first and first.stat().st_mtime_ns == stamp
    edited = tmp_path / "iiwa14.urdf"
    edited.write_text(IIWA.read_text().replace('<mass value="0.3"/>', '<mass value="0.4"/>'))
    second = robot_usd(edited, tmp_path / "cache")
    assert second != first and second.is_file()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "tmp" in p.name]


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('name="iiwa_joint_3" type="revolute"', 'name="iiwa_joint_3" type="prismatic"', "iiwa_joint_3"),
        (
            '<link name="probe_tip"/>',
            '<link name="probe_tip"><inertial><mass value="-1"/></inertial></link>',
            "probe_tip",
        ),
        ('<cylinder radius="0.05" length="0.1"/>', '<mesh filename="link7.stl"/>', "iiwa_link_7"),
        ('<parent link="iiwa_link_6"/>', '<parent link="nowhere"/>', "nowhere"),
    ],
)
def test_robot_bad_urdf(tmp_path, old, new, match):
    bad = tmp_path / "bad.urdf"
    text = IIWA.read_text()
    assert old in text
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(InputError, match=match):
        robot_usd(bad, tmp_path)


def test_massless_link_on_moving_joint_is_rejected(tmp_path):
    bad = tmp_path / "bad.urdf"
    revolute = '<joint name="iiwa_flange_fixed" type="revolute"><limit lower="-1" upper="1" velocity="1" effort="1"/>'
    bad.write_text(IIWA.read_text().replace('<joint name="iiwa_flange_fixed" type="fixed">', revolute))
    with pytest.raises(InputError, match="iiwa_flange"):
        robot_usd(bad, tmp_path)


def test_body_collider(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.2)  # 5120 faces
    mesh.apply_translation([0.1, -0.2, 0.9])
    path = body_usd(mesh, tmp_path, "body", max_faces=500)
    stage = Usd.Stage.Open(str(path))
    assert stage.GetDefaultPrim().GetPath() == "/body"
    prim = stage.GetPrimAtPath("/body/mesh")
    assert prim.HasAPI(UsdPhysics.CollisionAPI)
    assert UsdPhysics.MeshCollisionAPI(prim).GetApproximationAttr().Get() == UsdPhysics.Tokens.none
    assert not any(p.HasAPI(UsdPhysics.RigidBodyAPI) for p in stage.Traverse())
    geom = UsdGeom.Mesh(prim)
    counts = np.array(geom.GetFaceVertexCountsAttr().Get())
    assert (counts == 3).all() and 100 < len(counts) <= 500
    points = np.array(geom.GetPointsAttr().Get())
    assert np.allclose(np.linalg.norm(points - [0.1, -0.2, 0.9], axis=1), 0.2, atol=0.02)  # placed as given
    stamp = path.stat().st_mtime_ns
    assert body_usd(mesh, tmp_path, "body", max_faces=500) == path and path.stat().st_mtime_ns == stamp
    # a small mesh is written exactly as given
    box = trimesh.creation.box([0.1, 0.2, 0.3])
    box_path = body_usd(box, tmp_path, "case-01.box")
    assert box_path.name == "case-01.box.usda" and box_path.parent.name.startswith("case-01.box-")
    box_stage = Usd.Stage.Open(str(box_path))
    exact = UsdGeom.Mesh(box_stage.GetPrimAtPath("/body/mesh"))
    assert np.allclose(np.array(exact.GetPointsAttr().Get()), box.vertices)
    assert np.array_equal(np.array(exact.GetFaceVertexIndicesAttr().Get()), box.faces.ravel())


def test_body_bad_input(tmp_path):
    with pytest.raises(InputError, match="name"):
        body_usd(trimesh.creation.box(), tmp_path, "../body")
    bad = trimesh.Trimesh(np.full((3, 3), np.nan), [[0, 1, 2]], process=False)
    with pytest.raises(InputError, match="finite"):
        body_usd(bad, tmp_path, "body")
    with pytest.raises(InputError, match="indexing"):
        body_usd(trimesh.Trimesh(np.eye(3), [[0, 1, 3]], process=False), tmp_path, "body")
    assert not os.listdir(tmp_path)


def test_an_arm_is_written_with_the_links_to_its_tool_only(tmp_path):
    panda = ROBOTS / "panda.urdf"
    held_stage = Usd.Stage.Open(str(robot_usd(panda, tmp_path, "drill_tip")))
    full_stage = Usd.Stage.Open(str(robot_usd(panda, tmp_path)))
    held = {p.GetName() for p in held_stage.Traverse()}
    full = {p.GetName() for p in full_stage.Traverse()}
    # The Panda's URDF also carries a probe housing at its flange; the arm holding the drill has none.
    assert {"panda_link7", "drill_tip"} <= held and "panda_probe" not in held and "probe_tip" not in held
    assert {"panda_probe", "drill_tip"} <= full
    with pytest.raises(InputError, match="tool_frame"):
        robot_usd(panda, tmp_path, "no_such_link")
