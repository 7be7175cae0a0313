"""USD assets for the Isaac Lab backend, written with `pxr` alone (no Isaac Sim, no URDF importer).

`robot_usd` turns one of our URDFs into a UsdPhysics articulation that Isaac Lab 3 loads kit-less
with Newton; `body_usd` turns a patient's skin mesh into a static triangle-mesh collider. Both
write `cache_dir/<name>-<12 hex of a hash of the input>/<name>.usda` atomically and reuse it when
it exists. Units are SI (metres, kilograms, seconds); USD itself wants joint limits in degrees
and drive gains per degree, which this module converts.

Robot layout (the default prim, spawned e.g. at `{ENV_REGEX_NS}/Robot`):

    /<robot>                          Xform, ArticulationRootAPI (fixed base)
    /<robot>/<link>                   one Xform per link with mass: RigidBodyAPI + MassAPI,
                                      posed at the link's frame for q = 0 (all bodies are siblings)
    /<robot>/<link>/visual_<i>        Cylinder / Cube / Sphere with the URDF colour
    /<robot>/<link>/collision_<i>     the same shapes with CollisionAPI (purpose "guide")
    /<robot>/<link>/<frame>           massless links (flange, probe_tip) as plain Xforms, nested
                                      under the body they are rigidly attached to
    /<robot>/joints/root_joint        FixedJoint from the root Xform (world) to the root link
    /<robot>/joints/<joint>           RevoluteJoint + DriveAPI:angular per URDF revolute joint,
                                      FixedJoint per fixed joint between two links with mass

For sonolab's iiwa14.urdf the bodies are iiwa_link_0..7 and iiwa_probe; the probe face is the Xform
/iiwa14/iiwa_probe/probe_tip, at `tool_offset(urdf, "iiwa_probe", "probe_tip")` = (0, 0, 0.12) m
in the iiwa_probe body frame (the offset to give Isaac Lab's IK, which works on bodies).
"""

from __future__ import annotations

import hashlib
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from pxr import Gf, Sdf, Usd, UsdGeom, UsdPhysics, Vt

from sim.errors import InputError, require
from sim.transforms import matrix_to_quat, rpy_to_matrix

WRITER_VERSION = "1"  # bump when the written USD changes, so cached files are rewritten

# Placeholder joint drive gains (Isaac Lab's actuator cfg overrides them): N*m/rad, N*m*s/rad.
DRIVE_STIFFNESS = 2000.0
DRIVE_DAMPING = 100.0

_AXES = ("X", "Y", "Z")


@dataclass(frozen=True)
class _Shape:
    """A URDF visual or collision shape: kind in {"cylinder", "box", "sphere"}, sizes in metres."""

    kind: str
    size: tuple[float, ...]  # cylinder (radius, length), box (x, y, z), sphere (radius,)
    pose: np.ndarray  # (4, 4) in the link frame
    rgba: tuple[float, float, float, float] | None


@dataclass
class _Link:
    name: str
    mass: float  # kg; 0 for a massless frame
    com: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) m, link frame
    inertia_frame: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) rotation of <inertial><origin>
    inertia: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # (3, 3) kg*m^2 about the com
    visuals: list[_Shape] = field(default_factory=list)
    collisions: list[_Shape] = field(default_factory=list)


@dataclass(frozen=True)
class _Joint:
    name: str
    kind: str  # "revolute" or "fixed"
    parent: str
    child: str
    origin: np.ndarray  # (4, 4) child frame in the parent frame at q = 0
    axis: np.ndarray  # (3,) unit vector in the child (= joint) frame
    lower: float  # rad
    upper: float  # rad
    velocity: float  # rad/s
    effort: float  # N*m


@dataclass
class _Robot:
    name: str
    links: dict[str, _Link]
    joints: list[_Joint]  # parents before children
    root: str


# --------------------------------------------------------------------------- small rigid-body maths


def _rpy_matrix(rpy: np.ndarray) -> np.ndarray:
    return rpy_to_matrix(torch.from_numpy(np.asarray(rpy, np.float64))).numpy()


def _quat_wxyz(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation to a unit quaternion (4,) (w, x, y, z)."""
    return matrix_to_quat(torch.from_numpy(np.asarray(m, np.float64))).numpy()


def _rotation_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The smallest (3, 3) rotation taking unit vector u to unit vector v."""
    c = float(np.dot(u, v))
    if c > 1.0 - 1e-12:
        return np.eye(3)
    if c < -1.0 + 1e-12:  # half turn about any axis perpendicular to u
        w = np.cross(u, np.eye(3)[int(np.argmin(np.abs(u)))])
        w /= np.linalg.norm(w)
        return 2.0 * np.outer(w, w) - np.eye(3)
    w = np.cross(u, v)
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def _transform(xyz: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(4, 4) homogeneous transform from a translation (3,) and a rotation (3, 3)."""
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot, xyz
    return t


# --------------------------------------------------------------------------- URDF parsing


def _floats(elem: ET.Element, attr: str, n: int, what: str, default: str | None = None) -> np.ndarray:
    """`n` finite floats from attribute `attr` of `elem`; InputError naming `what` otherwise."""
    text = elem.get(attr, default)
    try:
        values = np.array([float(v) for v in (text or "").split()])
    except ValueError:
        values = np.array([])
    if values.shape != (n,) or not np.isfinite(values).all():
        raise InputError(f"{what}: expected attribute {attr!r} with {n} finite numbers, got {text!r}")
    return values


def _float(elem: ET.Element, attr: str, what: str) -> float:
    """One finite float from attribute `attr` of `elem`."""
    return float(_floats(elem, attr, 1, what)[0])


def _origin(elem: ET.Element, what: str) -> np.ndarray:
    """(4, 4) transform of the <origin> child of `elem` (identity when absent)."""
    o = elem.find("origin")
    if o is None:
        return np.eye(4)
    xyz = _floats(o, "xyz", 3, f"{what} <origin>", "0 0 0")
    return _transform(xyz, _rpy_matrix(_floats(o, "rpy", 3, f"{what} <origin>", "0 0 0")))


def _shapes(link: ET.Element, tag: str, colours: dict[str, tuple], what: str) -> list[_Shape]:
    """The <visual> or <collision> (`tag`) shapes of a URDF link."""
    shapes = []
    for i, elem in enumerate(link.findall(tag)):
        where = f"{what} <{tag}> {i}"
        geom = elem.find("geometry")
        kinds = [] if geom is None else [g for g in geom if g.tag in ("cylinder", "box", "sphere")]
        if len(kinds) != 1:
            found = [] if geom is None else [g.tag for g in geom]
            raise InputError(f"{where}: expected one <geometry> of cylinder, box or sphere, got {found}")
        g = kinds[0]
        if g.tag == "cylinder":
            size = (*_floats(g, "radius", 1, where), *_floats(g, "length", 1, where))
        elif g.tag == "box":
            size = tuple(_floats(g, "size", 3, where))
        else:
            size = tuple(_floats(g, "radius", 1, where))
        if min(size) <= 0:
            raise InputError(f"{where}: expected positive {g.tag} dimensions in metres, got {size}")
        rgba = None
        material = elem.find("material")
        if material is not None:
            colour = material.find("color")
            rgba = tuple(_floats(colour, "rgba", 4, where)) if colour is not None else colours.get(material.get("name"))
        shapes.append(_Shape(g.tag, tuple(float(s) for s in size), _origin(elem, where), rgba))
    return shapes


def _parse_link(elem: ET.Element, colours: dict[str, tuple], what: str) -> _Link:
    name = elem.get("name", "")
    where = f"{what} link {name!r}"
    if not Sdf.Path.IsValidIdentifier(name):
        raise InputError(f"{where}: expected a link name usable as a USD prim name (letters, digits, _), got {name!r}")
    visuals, collisions = _shapes(elem, "visual", colours, where), _shapes(elem, "collision", colours, where)
    link = _Link(name, 0.0, visuals=visuals, collisions=collisions)
    inertial = elem.find("inertial")
    if inertial is None:
        return link
    mass_elem, inertia_elem = inertial.find("mass"), inertial.find("inertia")
    if mass_elem is None:
        raise InputError(f"{where} <inertial>: expected a <mass value=...> element")
    link.mass = _float(mass_elem, "value", f"{where} <mass>")
    if link.mass < 0:
        raise InputError(f"{where} <mass>: expected a mass >= 0 kg, got {link.mass}")
    if link.mass == 0:
        return link
    if inertia_elem is None:
        raise InputError(f"{where} <inertial>: expected an <inertia> element for mass {link.mass} kg")
    ixx, ixy, ixz, iyy, iyz, izz = (
        _float(inertia_elem, k, f"{where} <inertia>") for k in ("ixx", "ixy", "ixz", "iyy", "iyz", "izz")
    )
    link.inertia = np.array([[ixx, ixy, ixz], [ixy, iyy, iyz], [ixz, iyz, izz]])
    if np.linalg.eigvalsh(link.inertia).min() <= 0:
        raise InputError(
            f"{where} <inertia>: expected a positive-definite inertia tensor in kg*m^2, got {link.inertia.tolist()}"
        )
    origin = _origin(inertial, f"{where} <inertial>")
    link.com, link.inertia_frame = origin[:3, 3], origin[:3, :3]
    return link


def _parse_joint(elem: ET.Element, links: dict[str, _Link], what: str) -> _Joint:
    name, kind = elem.get("name", ""), elem.get("type", "")
    where = f"{what} joint {name!r}"
    if not Sdf.Path.IsValidIdentifier(name):
        raise InputError(f"{where}: expected a joint name usable as a USD prim name (letters, digits, _), got {name!r}")
    if kind not in ("revolute", "fixed"):
        raise InputError(f"{where}: expected type 'revolute' or 'fixed', got {kind!r}")
    ends = []
    for tag in ("parent", "child"):
        e = elem.find(tag)
        link = None if e is None else e.get("link")
        if link not in links:
            raise InputError(f"{where}: expected <{tag} link=...> naming a link of the robot, got {link!r}")
        ends.append(link)
    axis, lower, upper, velocity, effort = np.array([1.0, 0.0, 0.0]), 0.0, 0.0, 0.0, 0.0
    if kind == "revolute":
        a = elem.find("axis")
        axis = _floats(a, "xyz", 3, f"{where} <axis>") if a is not None else axis
        if np.linalg.norm(axis) < 1e-9:
            raise InputError(f"{where} <axis>: expected a non-zero axis, got {axis.tolist()}")
        axis = axis / np.linalg.norm(axis)
        lim = elem.find("limit")
        if lim is None:
            raise InputError(f"{where}: expected a <limit lower upper velocity effort> element")
        lower, upper, velocity, effort = (
            _float(lim, k, f"{where} <limit>") for k in ("lower", "upper", "velocity", "effort")
        )
        if not lower < upper:
            raise InputError(f"{where} <limit>: expected lower < upper (rad), got {lower} and {upper}")
    return _Joint(name, kind, ends[0], ends[1], _origin(elem, where), axis, lower, upper, velocity, effort)


def _parse_urdf(urdf_path: Path) -> tuple[_Robot, str]:
    """The robot tree of a URDF file and its text."""
    what = f"URDF {urdf_path}"
    try:
        text = Path(urdf_path).read_text()
        root = ET.fromstring(text)
    except (OSError, ET.ParseError) as err:
        raise InputError(f"{what}: expected a readable URDF (XML) file: {err}") from err
    name = root.get("name", "")
    if root.tag != "robot" or not Sdf.Path.IsValidIdentifier(name):
        raise InputError(
            f"{what}: expected a <robot name=...> root named like a USD prim, got <{root.tag} name={name!r}>"
        )
    colours = {}
    for m in root.findall("material"):
        c = m.find("color")
        if c is not None:
            colours[m.get("name")] = tuple(_floats(c, "rgba", 4, f"{what} material {m.get('name')!r}"))
    links = {}
    for elem in root.findall("link"):
        link = _parse_link(elem, colours, what)
        if link.name in links:
            raise InputError(f"{what}: expected unique link names, got {link.name!r} twice")
        links[link.name] = link
    joints = [_parse_joint(e, links, what) for e in root.findall("joint")]
    parent_of: dict[str, _Joint] = {}
    for j in joints:
        if j.child in parent_of:
            raise InputError(
                f"{what}: expected a tree, got link {j.child!r} as the "
                f"child of {parent_of[j.child].name!r} and {j.name!r}"
            )
        parent_of[j.child] = j
    roots = [n for n in links if n not in parent_of]
    if len(roots) != 1:
        raise InputError(f"{what}: expected exactly one root link, got {roots}")
    ordered, frontier = [], [roots[0]]  # breadth-first: parents before children
    while frontier:
        children = [j for j in joints if j.parent in frontier]
        ordered += children
        frontier = [j.child for j in children]
    if len(ordered) != len(joints):
        raise InputError(f"{what}: expected every joint to hang below root link {roots[0]!r} (no cycles)")
    return _Robot(name, links, ordered, roots[0]), text


# --------------------------------------------------------------------------- kinematic bookkeeping


def _attachments(robot: _Robot) -> dict[str, tuple[str, np.ndarray]]:
    """For every link: (the body it belongs to, its (4, 4) frame in that body's frame).

    A link with mass is its own body (identity). A massless link must hang on a fixed joint and
    belongs to its parent's body: it becomes a plain Xform there.
    """
    if robot.links[robot.root].mass <= 0:
        raise InputError(
            f"URDF robot {robot.name!r}: expected root link {robot.root!r} to have a mass (it is the base body)"
        )
    attached = {robot.root: (robot.root, np.eye(4))}
    for j in robot.joints:
        if robot.links[j.child].mass > 0:
            attached[j.child] = (j.child, np.eye(4))
        elif j.kind != "fixed":
            raise InputError(
                f"URDF robot {robot.name!r} joint {j.name!r}: "
                f"expected massless link {j.child!r} on a fixed joint, got {j.kind!r}"
            )
        else:
            body, frame = attached[j.parent]
            attached[j.child] = (body, frame @ j.origin)
    return attached


def tool_body(urdf_path: Path, frame: str) -> str:
    """The body (link with mass) that link `frame` is rigidly attached to, e.g.
    `tool_body(iiwa14.urdf, "probe_tip")` -> "iiwa_probe": where a contact sensor on the tool goes."""
    robot, _ = _parse_urdf(Path(urdf_path))
    attached = _attachments(robot)
    if frame not in attached:
        raise InputError(f"tool_body: expected a link of {urdf_path}, got {frame!r}; links are {sorted(attached)}")
    return attached[frame][0]


def tool_offset(urdf_path: Path, body: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """Pose of link `frame` in the frame of link `body`, when fixed joints alone join them.

    This is the offset a body-based controller needs for a massless tool frame, e.g.
    `tool_offset(urdf, "iiwa_probe", "probe_tip")` -> ((0, 0, 0.12), (1, 0, 0, 0)).

    Returns:
        xyz (3,) in metres and quaternion (4,) (w, x, y, z).
    """
    robot, _ = _parse_urdf(Path(urdf_path))
    for name in (body, frame):
        if name not in robot.links:
            raise InputError(
                f"tool_offset: expected a link of {urdf_path}, got {name!r}; links are {sorted(robot.links)}"
            )
    parent_of = {j.child: j for j in robot.joints}
    t, link = np.eye(4), frame
    while link != body:
        j = parent_of.get(link)
        if j is None or j.kind != "fixed":
            got = "no path" if j is None else f"{j.kind} joint {j.name!r}"
            raise InputError(
                f"tool_offset: expected {frame!r} below {body!r} on fixed joints only in {urdf_path}, got {got}"
            )
        t, link = j.origin @ t, j.parent
    return t[:3, 3].copy(), _quat_wxyz(t[:3, :3])


# --------------------------------------------------------------------------- USD writing


def _cache_path(cache_dir: Path, name: str, digest: str) -> Path:
    return Path(cache_dir) / f"{name}-{digest[:12]}" / f"{name}.usda"


def _save_atomically(stage: Usd.Stage, path: Path) -> None:
    """Export `stage` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.usda")
    stage.GetRootLayer().Export(str(tmp))
    os.replace(tmp, path)


def _new_stage(root_name: str) -> tuple[Usd.Stage, UsdGeom.Xform]:
    """An in-memory z-up, metre/kilogram stage whose default prim is the Xform /<root_name>."""
    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    UsdPhysics.SetStageKilogramsPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, f"/{root_name}")
    stage.SetDefaultPrim(root.GetPrim())
    return stage, root


def _set_pose(xformable: UsdGeom.Xformable, t: np.ndarray, scale: tuple[float, ...] | None = None) -> None:
    """Author translate + orient (+ scale) ops from a (4, 4) transform."""
    xformable.AddTranslateOp().Set(Gf.Vec3d(*t[:3, 3]))
    xformable.AddOrientOp(UsdGeom.XformOp.PrecisionDouble).Set(Gf.Quatd(*_quat_wxyz(t[:3, :3])))
    if scale is not None:
        xformable.AddScaleOp().Set(Gf.Vec3f(*scale))


def _write_shape(stage: Usd.Stage, path: str, shape: _Shape, collider: bool) -> None:
    if shape.kind == "cylinder":
        geom = UsdGeom.Cylinder.Define(stage, path)
        geom.CreateRadiusAttr(shape.size[0])
        geom.CreateHeightAttr(shape.size[1])
        geom.CreateAxisAttr(UsdGeom.Tokens.z)
        r, h = shape.size[0], shape.size[1] / 2
        geom.CreateExtentAttr([Gf.Vec3f(-r, -r, -h), Gf.Vec3f(r, r, h)])
        _set_pose(geom, shape.pose)
    elif shape.kind == "box":  # a unit cube scaled to the box, as Isaac Lab's importer writes it
        geom = UsdGeom.Cube.Define(stage, path)
        geom.CreateSizeAttr(1.0)
        geom.CreateExtentAttr([Gf.Vec3f(-0.5, -0.5, -0.5), Gf.Vec3f(0.5, 0.5, 0.5)])
        _set_pose(geom, shape.pose, scale=shape.size)
    else:
        geom = UsdGeom.Sphere.Define(stage, path)
        geom.CreateRadiusAttr(shape.size[0])
        r = shape.size[0]
        geom.CreateExtentAttr([Gf.Vec3f(-r, -r, -r), Gf.Vec3f(r, r, r)])
        _set_pose(geom, shape.pose)
    if collider:
        UsdPhysics.CollisionAPI.Apply(geom.GetPrim())
        geom.CreatePurposeAttr(UsdGeom.Tokens.guide)  # not drawn; the visual twin is
    elif shape.rgba is not None:
        geom.CreateDisplayColorAttr([Gf.Vec3f(*shape.rgba[:3])])
        geom.CreateDisplayOpacityAttr([float(shape.rgba[3])])


def _write_mass(prim: Usd.Prim, link: _Link) -> None:
    """MassAPI: mass, centre of mass, principal moments and axes (link frame)."""
    tensor = link.inertia_frame @ link.inertia @ link.inertia_frame.T  # about the com, link axes
    if np.allclose(tensor, np.diag(np.diag(tensor)), rtol=0, atol=1e-12):
        moments, axes = np.diag(tensor), np.eye(3)
    else:
        moments, axes = np.linalg.eigh(tensor)
        axes[:, 2] *= np.sign(np.linalg.det(axes))  # a proper rotation
    mass = UsdPhysics.MassAPI.Apply(prim)
    mass.CreateMassAttr(link.mass)
    mass.CreateCenterOfMassAttr(Gf.Vec3f(*link.com))
    mass.CreateDiagonalInertiaAttr(Gf.Vec3f(*moments))
    mass.CreatePrincipalAxesAttr(Gf.Quatf(*_quat_wxyz(axes)))


def _joint_frames(joint: UsdPhysics.Joint, body0: str, body1: str, frame0: np.ndarray, frame1: np.ndarray) -> None:
    """Relationships to the two bodies and the joint frame (4, 4) in each body's frame."""
    joint.CreateBody0Rel().SetTargets([Sdf.Path(body0)])
    joint.CreateBody1Rel().SetTargets([Sdf.Path(body1)])
    joint.CreateLocalPos0Attr(Gf.Vec3f(*frame0[:3, 3]))
    joint.CreateLocalRot0Attr(Gf.Quatf(*_quat_wxyz(frame0[:3, :3])))
    joint.CreateLocalPos1Attr(Gf.Vec3f(*frame1[:3, 3]))
    joint.CreateLocalRot1Attr(Gf.Quatf(*_quat_wxyz(frame1[:3, :3])))


def _write_robot(robot: _Robot, path: Path) -> None:
    stage, root = _new_stage(robot.name)
    base = f"/{robot.name}"
    UsdPhysics.ArticulationRootAPI.Apply(root.GetPrim())
    # Adjacent links' shapes touch at the joints: no self-collision (Newton reads this attribute).
    root.GetPrim().AddAppliedSchema("NewtonArticulationRootAPI")
    root.GetPrim().CreateAttribute("newton:selfCollisionEnabled", Sdf.ValueTypeNames.Bool).Set(False)

    attached = _attachments(robot)
    rest = {robot.root: np.eye(4)}  # link frames in the robot frame at q = 0
    for j in robot.joints:
        rest[j.child] = rest[j.parent] @ j.origin
    parent_joint = {j.child: j for j in robot.joints}
    prim_path = {}  # link -> USD path
    for name in [robot.root] + [j.child for j in robot.joints]:
        link = robot.links[name]
        if link.mass > 0:
            prim_path[name] = f"{base}/{name}"
            xform = UsdGeom.Xform.Define(stage, prim_path[name])
            _set_pose(xform, rest[name])
            UsdPhysics.RigidBodyAPI.Apply(xform.GetPrim())
            _write_mass(xform.GetPrim(), link)
        else:  # a frame nested under the prim of its parent link
            j = parent_joint[name]
            prim_path[name] = f"{prim_path[j.parent]}/{name}"
            _set_pose(UsdGeom.Xform.Define(stage, prim_path[name]), j.origin)
        for i, shape in enumerate(link.visuals):
            _write_shape(stage, f"{prim_path[name]}/visual_{i}", shape, collider=False)
        for i, shape in enumerate(link.collisions):
            _write_shape(stage, f"{prim_path[name]}/collision_{i}", shape, collider=True)

    UsdGeom.Scope.Define(stage, f"{base}/joints")
    root_joint = UsdPhysics.FixedJoint.Define(stage, f"{base}/joints/root_joint")
    _joint_frames(root_joint, base, prim_path[robot.root], np.eye(4), np.eye(4))
    for j in robot.joints:
        if robot.links[j.child].mass <= 0:
            continue
        parent_body, parent_frame = attached[j.parent]
        # USD revolute axes are X, Y or Z of the joint frame: turn that frame onto the URDF axis.
        k = int(np.argmax(np.abs(j.axis)))
        turn = _transform(np.zeros(3), _rotation_between(np.eye(3)[k], j.axis))
        frame0, frame1 = parent_frame @ j.origin @ turn, turn
        if j.kind == "fixed":
            joint = UsdPhysics.FixedJoint.Define(stage, f"{base}/joints/{j.name}")
        else:
            joint = UsdPhysics.RevoluteJoint.Define(stage, f"{base}/joints/{j.name}")
            joint.CreateAxisAttr(_AXES[k])
            joint.CreateLowerLimitAttr(float(np.degrees(j.lower)))
            joint.CreateUpperLimitAttr(float(np.degrees(j.upper)))
            drive = UsdPhysics.DriveAPI.Apply(joint.GetPrim(), "angular")
            drive.CreateTypeAttr("force")
            drive.CreateStiffnessAttr(DRIVE_STIFFNESS * np.pi / 180)  # per degree, as USD wants
            drive.CreateDampingAttr(DRIVE_DAMPING * np.pi / 180)
            drive.CreateMaxForceAttr(j.effort)
            joint.GetPrim().AddAppliedSchema("NewtonJointAPI")
            joint.GetPrim().CreateAttribute("newton:velocityLimit", Sdf.ValueTypeNames.Float).Set(
                float(np.degrees(j.velocity))
            )
        _joint_frames(joint, prim_path[parent_body], prim_path[j.child], frame0, frame1)
    _save_atomically(stage, path)


def _held_chain(robot: _Robot, tool_frame: str, what: str) -> _Robot:
    """`robot` with only the links and joints on the path from its root to `tool_frame`: a URDF may
    carry other tools at its flange (the Panda's probe housing beside its drill frame) that an arm
    holding this tool does not have, and whose shapes would collide in a physics scene."""
    require(tool_frame in robot.links, f"{what} tool_frame", f"one of its links {sorted(robot.links)}", tool_frame)
    parent_joint = {j.child: j for j in robot.joints}
    keep, link = {tool_frame}, tool_frame
    while link in parent_joint:
        link = parent_joint[link].parent
        keep.add(link)
    links = {name: value for name, value in robot.links.items() if name in keep}
    return _Robot(robot.name, links, [j for j in robot.joints if j.child in keep], robot.root)


def robot_usd(urdf_path: Path, cache_dir: Path, tool_frame: str | None = None) -> Path:
    """Write (or reuse) the USD articulation of a URDF robot; returns the .usda path.

    Supports revolute and fixed joints, links with <inertial> and cylinder/box/sphere shapes.
    Links with mass become rigid bodies named like the links, revolute joints keep their URDF
    names (limits in degrees, axis, an angular force drive with placeholder gains), fixed joints
    between links with mass become FixedJoints, and the root link is welded to the root Xform
    (a fixed base). Massless links (flange, probe_tip) become Xforms inside the body they are
    attached to; get their pose in that body with `tool_offset`. See the module docstring for
    the prim layout.

    Args:
        urdf_path: the robot's URDF file.
        cache_dir: folder for `<robot>-<hash>/<robot>.usda`; the hash covers the URDF text, the
            tool frame and the writer version, so an edited URDF gets a new file.
        tool_frame: the link the arm holds its tool at; only the links from the root to it are
            written (None: every link).
    """
    robot, text = _parse_urdf(Path(urdf_path))
    if tool_frame is not None:
        robot = _held_chain(robot, tool_frame, f"URDF {urdf_path}")
    digest = hashlib.sha256(f"{WRITER_VERSION}\n{tool_frame}\n{text}".encode()).hexdigest()
    path = _cache_path(cache_dir, robot.name, digest)
    if not path.is_file():
        _write_robot(robot, path)
    return path


def body_usd(mesh: trimesh.Trimesh, cache_dir: Path, name: str, max_faces: int = 8000) -> Path:
    """Write (or reuse) a static triangle-mesh collider USD of `mesh`; returns the .usda path.

    The default prim is the Xform /body holding the Mesh /body/mesh, with CollisionAPI and
    MeshCollisionAPI approximation "none" (the exact triangles; no RigidBodyAPI, so it is static).
    A ContactSensor finds it with `filter_shape_prim_expr=["<spawn path>/mesh"]`.

    Args:
        mesh: triangle mesh, vertices in metres in the frame the caller wants the collider in.
        cache_dir: folder for `<name>-<hash>/<name>.usda`; the hash covers the mesh arrays,
            `max_faces` and the writer version.
        name: names the file and its folder (e.g. the patient's name): letters, digits, ".", "_", "-".
        max_faces: meshes with more triangles are decimated (quadric) to at most about this many.
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise InputError(f"body_usd name: expected a file name of letters, digits, '.', '_' and '-', got {name!r}")
    if not isinstance(max_faces, int) or max_faces < 4:
        raise InputError(f"body_usd max_faces: expected an integer >= 4, got {max_faces!r}")
    vertices = np.ascontiguousarray(getattr(mesh, "vertices", np.empty((0, 3))), dtype=np.float64)
    faces = np.ascontiguousarray(getattr(mesh, "faces", np.empty((0, 3))), dtype=np.int64)
    valid = (
        vertices.ndim == 2
        and vertices.shape[1:] == (3,)
        and faces.ndim == 2
        and faces.shape[1:] == (3,)
        and len(faces) > 0
    )
    if not valid or not np.isfinite(vertices).all() or faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(
            f"body_usd mesh {name!r}: expected a trimesh.Trimesh with finite (V, "
            "3) vertices and (F, 3) triangles indexing them, "
            f"got vertices {vertices.shape} and faces {faces.shape}"
        )
    h = hashlib.sha256(f"{WRITER_VERSION}\n{max_faces}\n".encode())
    h.update(vertices.tobytes())
    h.update(faces.tobytes())
    path = _cache_path(cache_dir, name, h.hexdigest())
    if path.is_file():
        return path
    if len(faces) > max_faces:
        mesh = trimesh.Trimesh(vertices, faces, process=False).simplify_quadric_decimation(face_count=max_faces)
        vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)

    stage, _ = _new_stage("body")
    geom = UsdGeom.Mesh.Define(stage, "/body/mesh")
    geom.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(vertices.astype(np.float32)))
    geom.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, np.int32)))
    geom.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(faces.astype(np.int32).ravel()))
    geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    geom.CreateExtentAttr([Gf.Vec3f(*vertices.min(0)), Gf.Vec3f(*vertices.max(0))])
    geom.CreateDisplayColorAttr([Gf.Vec3f(0.9, 0.75, 0.65)])  # skin
    UsdPhysics.CollisionAPI.Apply(geom.GetPrim())
    UsdPhysics.MeshCollisionAPI.Apply(geom.GetPrim()).CreateApproximationAttr(UsdPhysics.Tokens.none)
    _save_atomically(stage, path)
    return path
