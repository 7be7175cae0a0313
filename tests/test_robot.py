"""Arm URDFs, batched kinematics and damped-least-squares IK (sim.robot)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sim.errors import InputError
from sim.robot import Arm, compose_poses, invert_poses, joint_step, solve_ik
from sim.robot.arm import ROBOTS_DIR
from sim.transforms import matrix_to_quat, quat_to_matrix
from sim.ultrasound.placement import probe_pose_on_skin

PROBE_M = 0.12
IIWA_FLANGE_M = 0.36 + 0.42 + 0.40 + 0.126


@pytest.fixture(scope="module")
def iiwa() -> Arm:
    return Arm("iiwa14")


@pytest.fixture(scope="module")
def panda() -> Arm:
    return Arm("panda")


def random_q(arm: Arm, n: int, dtype: torch.dtype, seed: int, margin: float = 0.1) -> torch.Tensor:
    """n joint configurations drawn uniformly inside the limits shrunk by `margin` rad."""
    g = torch.Generator().manual_seed(seed)
    lower, upper = arm.limits(torch.zeros((), dtype=dtype))
    return lower + margin + (upper - lower - 2 * margin) * torch.rand(n, arm.dof, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", ["iiwa14", "panda"])
def test_urdf_is_plain_xml_with_seven_limited_joints_masses_and_probe_tip(name):
    root = ET.parse(ROBOTS_DIR / f"{name}.urdf").getroot()
    revolute = [j for j in root.iter("joint") if j.get("type") == "revolute"]
    assert len(revolute) == 7
    for joint in revolute:
        limit = joint.find("limit")
        assert float(limit.get("lower")) < float(limit.get("upper"))
        assert float(limit.get("velocity")) > 0 and float(limit.get("effort")) > 0
    bodies = [link for link in root.iter("link") if link.find("inertial") is not None]
    assert len(bodies) == 9  # base, 7 moving links, probe
    for link in bodies:
        assert float(link.find("inertial/mass").get("value")) > 0
        assert link.find("collision/geometry") is not None
    assert "probe_tip" in {link.get("name") for link in root.iter("link")}


def test_iiwa_limits_match_the_datasheet(iiwa):
    deg = torch.tensor([170, 120, 170, 120, 170, 120, 175], dtype=torch.float64)
    assert torch.allclose(iiwa.upper, deg.deg2rad()) and torch.allclose(iiwa.lower, -deg.deg2rad())
    vel = torch.tensor([85, 85, 100, 75, 130, 135, 135], dtype=torch.float64)
    assert torch.allclose(iiwa.velocity, vel.deg2rad())


def test_iiwa_zero_pose_points_straight_up(iiwa):
    pose = iiwa.forward(torch.zeros(1, 7))
    # The probe is clamped turned -90 deg about the flange z axis (assets/robots/README.md).
    turned = [math.sqrt(0.5), 0, 0, -math.sqrt(0.5)]
    assert torch.allclose(pose, torch.tensor([[0, 0, IIWA_FLANGE_M + PROBE_M, *turned]]), atol=1e-6)
    flange = Arm("iiwa14", tool_frame="iiwa_flange").forward(torch.zeros(1, 7))
    assert torch.allclose(flange[0, :3], torch.tensor([0, 0, IIWA_FLANGE_M]), atol=1e-6)


def test_iiwa_elbow_at_90_deg_holds_the_forearm_horizontal(iiwa):
    q = torch.zeros(1, 7, dtype=torch.float64)
    q[0, 3] = math.pi / 2  # A4 turns about -y: the forearm swings to -x at the elbow's height
    pose = iiwa.forward(q)
    reach = 0.40 + 0.126 + PROBE_M
    assert torch.allclose(pose[0, :3], torch.tensor([-reach, 0, 0.36 + 0.42], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(quat_to_matrix(pose[0, 3:])[:, 2], torch.tensor([-1.0, 0, 0], dtype=torch.float64), atol=1e-9)


def test_iiwa_joint1_rotates_the_tool_about_base_z(iiwa):
    q = random_q(iiwa, 8, torch.float64, seed=1)
    turned = q.clone()
    turned[:, 0] += math.pi / 2
    turned[:, 0] -= torch.where(turned[:, 0] > iiwa.upper[0], 2 * math.pi, 0.0)  # same joint angle, in limits
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    a, b = iiwa.forward(q), iiwa.forward(turned)
    assert torch.allclose(b[:, :3], a[:, :3] @ rz.T, atol=1e-9)
    assert torch.allclose(quat_to_matrix(b[:, 3:]), rz @ quat_to_matrix(a[:, 3:]), atol=1e-9)


def modified_dh(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    """4x4 Craig transform RotX(alpha) TransX(a) RotZ(theta) TransZ(d)."""
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]])


def test_panda_ready_pose_matches_its_dh_table(panda):
    ready = [0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4]
    a = [0, 0, 0, 0.0825, -0.0825, 0, 0.088, 0]
    d = [0.333, 0, 0.316, 0, 0.384, 0, 0, 0.107 + PROBE_M]  # last row: flange plus probe
    alpha = [0, -math.pi / 2, math.pi / 2, math.pi / 2, -math.pi / 2, math.pi / 2, math.pi / 2, 0]
    expected = np.eye(4)
    for i, theta in enumerate(ready + [0.0]):
        expected = expected @ modified_dh(a[i], d[i], alpha[i], theta)
    pose = panda.forward(torch.tensor([ready], dtype=torch.float64))
    assert np.allclose(pose[0, :3].numpy(), expected[:3, 3], atol=1e-9)
    assert np.allclose(quat_to_matrix(pose[0, 3:]).numpy(), expected[:3, :3], atol=1e-9)
    assert torch.allclose(panda.home, torch.tensor(ready, dtype=torch.float64))
    assert expected[2, 2] == pytest.approx(-1.0)  # ready pose: tool straight down


@pytest.mark.parametrize("name", ["iiwa14", "panda"])
def test_jacobian_matches_finite_differences(name):
    arm = Arm(name)
    q = random_q(arm, 4, torch.float64, seed=2)
    jac = arm.jacobian(q)
    assert jac.shape == (4, 6, 7)
    h = 1e-6
    for j in range(7):
        dq = torch.zeros_like(q)
        dq[:, j] = h
        plus, minus = arm.forward(q + dq), arm.forward(q - dq)
        lin = (plus[:, :3] - minus[:, :3]) / (2 * h)
        rot = quat_to_matrix(plus[:, 3:]) @ quat_to_matrix(minus[:, 3:]).transpose(-1, -2)
        ang = torch.from_numpy(Rotation.from_matrix(rot.numpy()).as_rotvec()) / (2 * h)
        assert torch.allclose(jac[:, :3, j], lin, atol=1e-6)
        assert torch.allclose(jac[:, 3:, j], ang, atol=1e-6)


def test_base_pose_maps_tool_poses_between_frames():
    base = torch.tensor([0.5, -0.2, 0.1, math.cos(0.4), 0.0, math.sin(0.4), 0.0], dtype=torch.float64)
    arm = Arm("iiwa14", base_pose=base)
    q = random_q(arm, 5, torch.float64, seed=3)
    local = arm.forward(q)
    world = arm.forward_world(q)
    rot = quat_to_matrix(base[3:])
    assert torch.allclose(world[:, :3], base[:3] + local[:, :3] @ rot.T, atol=1e-12)
    assert torch.allclose(arm.world_to_base(world), local, atol=1e-12)
    assert torch.allclose(
        compose_poses(invert_poses(base), base), torch.tensor([0, 0, 0, 1.0, 0, 0, 0], dtype=torch.float64), atol=1e-12
    )


@pytest.mark.parametrize("name", ["iiwa14", "panda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ik_recovers_random_reachable_poses(name, dtype):
    arm = Arm(name, base_pose=torch.tensor([0.3, 0.1, -0.2, 1.0, 0, 0, 0]))
    q_true = random_q(arm, 64, dtype, seed=4)
    targets = arm.forward_world(q_true)
    g = torch.Generator().manual_seed(5)
    q0 = arm.clamp(q_true + 0.3 * torch.randn(q_true.shape, generator=g, dtype=dtype))
    result = solve_ik(arm, targets, q0, iterations=100)
    assert result.q.dtype == dtype and result.q.shape == (64, 7)
    assert result.reachable.float().mean() >= 0.95
    ok = result.reachable
    assert (result.position_error_m[ok] <= 1e-3).all() and (result.angle_error_rad[ok] <= math.radians(1)).all()
    reached = arm.forward_world(result.q)
    assert ((reached[ok, :3] - targets[ok, :3]).norm(dim=-1) <= 1e-3 + 1e-6).all()
    assert arm.within_limits(result.q).all()


def test_far_target_is_unreachable_and_q_stays_in_limits(iiwa):
    targets = torch.tensor([[3.0, 0.0, 0.5, 1, 0, 0, 0], [0.5, 0.0, 0.4, 0, 1, 0, 0]])
    result = solve_ik(iiwa, targets, iiwa.home.float().expand(2, 7).clone(), iterations=60)
    assert result.reachable.tolist() == [False, True]
    assert result.position_error_m[0] > 1.0
    assert iiwa.within_limits(result.q).all()


def test_joint_step_limits_the_joint_motion_and_approaches_the_target(iiwa):
    q = iiwa.home.float().expand(16, 7).clone()
    target = iiwa.forward_world(random_q(iiwa, 16, torch.float32, seed=6, margin=1.0))
    max_delta = iiwa.velocity * 0.05  # one 20 Hz control step at the velocity limits (float64)
    before = (iiwa.forward_world(q)[:, :3] - target[:, :3]).norm(dim=-1)
    stepped = joint_step(iiwa, q, target, max_joint_delta=max_delta)
    assert stepped.dtype == torch.float32
    assert ((stepped - q).abs() <= max_delta + 1e-6).all()
    assert iiwa.within_limits(stepped).all()
    after = (iiwa.forward_world(stepped)[:, :3] - target[:, :3]).norm(dim=-1)
    assert (after < before).float().mean() > 0.9


def test_prone_patient_back_poses_are_reachable_from_beside_the_table():
    # Patient frame RAS, prone: the back faces posterior (-y), which is "up". The base stands beside
    # the patient's right side (+x) with its z axis up (-y) and its x axis towards the patient.
    base_rot = torch.tensor([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]])  # columns: base x, y, z in patient frame
    base = torch.cat([torch.tensor([0.55, 0.0, 0.0]), matrix_to_quat(base_rot)])
    arm = Arm("iiwa14", base_pose=base)
    x, z, yaw = torch.meshgrid(
        torch.linspace(-0.08, 0.08, 3),
        torch.linspace(-0.12, 0.12, 3),
        torch.tensor([0.0, math.pi / 2, 2.5]),
        indexing="ij",
    )
    points = torch.stack([x.flatten(), torch.full_like(x.flatten(), -0.09), z.flatten()], -1)
    normals = torch.tensor([0.0, -1.0, 0.0]).expand_as(points)
    targets = probe_pose_on_skin(points, normals, yaw.flatten())
    result = solve_ik(arm, targets, arm.home.float().expand(len(targets), 7).clone())
    assert result.reachable.all(), (result.position_error_m, result.angle_error_rad)
    beam = quat_to_matrix(arm.forward_world(result.q)[:, 3:])[:, :, 2]
    assert torch.allclose(beam, torch.tensor([0.0, 1.0, 0.0]).expand_as(beam), atol=0.02)


def test_arm_to_keeps_results(iiwa):
    q = random_q(iiwa, 3, torch.float32, seed=7)
    assert torch.allclose(Arm("iiwa14").to("cpu").forward(q), iiwa.forward(q))


def test_bad_input_names_the_input(iiwa, tmp_path):
    q = torch.zeros(2, 7)
    target = iiwa.forward_world(q)
    cases = [
        (lambda: Arm("ur5"), "robot"),
        (lambda: Arm(tmp_path / "missing.urdf"), "robot"),
        (lambda: Arm("iiwa14", tool_frame="gripper"), "gripper"),
        (lambda: Arm("iiwa14", base_pose=torch.zeros(7)), "base_pose"),
        (lambda: iiwa.forward(torch.zeros(2, 6)), "q"),
        (lambda: iiwa.forward(torch.zeros(7)), "q"),
        (lambda: iiwa.forward(torch.full((2, 7), float("nan"))), "q"),
        (lambda: iiwa.forward(torch.zeros(2, 7, dtype=torch.long)), "q"),
        (lambda: iiwa.jacobian(torch.zeros(1, 8)), "q"),
        (lambda: solve_ik(iiwa, target[:1], q), "target_poses"),
        (lambda: solve_ik(iiwa, target[:, :6], q), "target_poses"),
        (lambda: solve_ik(iiwa, target, q[:, :5]), "q0"),
        (lambda: solve_ik(iiwa, target, q, damping=0.0), "damping"),
        (lambda: joint_step(iiwa, q, target.clone().fill_(float("nan")), 0.1), "target"),
        (lambda: joint_step(iiwa, q, target, 0.0), "max_joint_delta"),
    ]
    for call, name in cases:
        with pytest.raises(InputError, match=name):
            call()
