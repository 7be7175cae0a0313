import math

import torch

from sim.transforms import matrix_to_quat, pose_to_matrix, quat_to_matrix, rpy_to_matrix


def test_quat_matrix_known_rotation():
    # 90 degrees about +z maps +x to +y.
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])
    r = quat_to_matrix(q)
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)


def test_quat_roundtrip_batched():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(64, 4, generator=g, dtype=torch.float64), dim=-1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    assert torch.allclose(matrix_to_quat(quat_to_matrix(q)), q, atol=1e-9)
    r = quat_to_matrix(q)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-9)


def test_pose_to_matrix_translation():
    pose = torch.tensor([[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0]])
    m = pose_to_matrix(pose)
    assert m.shape == (1, 3, 4)
    assert torch.equal(m[0, :, 3], torch.tensor([1.0, 2.0, 3.0]))


def test_probe_pose_on_skin_points_the_beam_into_the_body():
    from sim.ultrasound.placement import probe_pose_on_skin

    point = torch.tensor([[0.0, -0.09, 0.0], [0.01, -0.08, 0.02]])
    normal = torch.nn.functional.normalize(torch.tensor([[0.0, -1.0, 0.0], [0.2, -1.0, 0.1]]), dim=-1)
    yaw = torch.tensor([0.0, 0.7])
    pose = probe_pose_on_skin(point, normal, yaw, press_m=0.002)
    rot = quat_to_matrix(pose[:, 3:])
    assert torch.allclose(rot[:, :, 2], -normal, atol=1e-6)  # beam along -normal
    assert torch.allclose(torch.det(rot), torch.ones(2), atol=1e-6)
    assert torch.allclose(rot[0, :, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)  # yaw 0: image x = patient x
    assert torch.allclose(pose[:, :3], point - normal * 0.002, atol=1e-7)


def test_rpy_to_matrix_known_rotations():
    half = math.pi / 2
    yaw = rpy_to_matrix(torch.tensor([0.0, 0.0, half], dtype=torch.float64))
    assert torch.allclose(
        yaw @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12
    )
    # URDF order: roll about x first, then pitch about y, then yaw about z (fixed axes).
    rpy = torch.tensor([[0.3, -0.4, 1.1]], dtype=torch.float64)
    rx = rpy_to_matrix(torch.tensor([[0.3, 0, 0]], dtype=torch.float64))
    ry = rpy_to_matrix(torch.tensor([[0, -0.4, 0]], dtype=torch.float64))
    rz = rpy_to_matrix(torch.tensor([[0, 0, 1.1]], dtype=torch.float64))
    assert torch.allclose(rpy_to_matrix(rpy), rz @ ry @ rx, atol=1e-12)
    assert torch.allclose(
        rx[0, 1:, 1:],
        torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]], dtype=torch.float64),
    )
