"""Probe on skin: batched skin lookups against the numpy reference, and the contact model."""

import numpy as np
import pytest
import torch

from sim.anatomy.derive import derive
from sim.anatomy.phantom import make_phantom
from sim.anatomy.surface import skin_point
from sim.errors import InputError
from sim.robot.contact import SkinBank, probe_contact
from sim.ultrasound.placement import probe_pose_on_skin


@pytest.fixture(scope="module")
def patients():
    return [derive(make_phantom(seed, spacing_mm=3.0), meshes=False) for seed in (0, 1)]


def test_skin_bank_matches_skin_point_for_mixed_patients(patients):
    bank = SkinBank(patients)
    rng = np.random.default_rng(0)
    n = 64
    idx = rng.integers(0, 2, n)
    x, z = rng.uniform(-0.05, 0.05, n), rng.uniform(-0.08, 0.08, n)
    point, normal = bank.query(
        torch.as_tensor(idx), torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(z, dtype=torch.float32)
    )
    for p in (0, 1):
        sel = idx == p
        ref_point, ref_normal = skin_point(patients[p].skin, x[sel], z[sel])
        assert np.allclose(point[torch.as_tensor(sel)].numpy(), ref_point, atol=1e-5)
        assert np.allclose(normal[torch.as_tensor(sel)].numpy(), ref_normal, atol=1e-4)


def test_contact_force_follows_penetration(patients):
    bank = SkinBank(patients)
    idx = torch.tensor([0, 0, 1, 1])
    x, z = torch.tensor([0.0, 0.01, -0.01, 0.02]), torch.tensor([0.0, 0.02, -0.03, 0.01])
    point, normal = bank.query(idx, x, z)
    press = torch.tensor([0.004, 0.0, 0.008, -0.005])  # the last probe hovers 5 mm above the skin
    poses = torch.cat(
        [point - normal * press[:, None], probe_pose_on_skin(point, normal, torch.zeros(4), 0.0)[:, 3:]], -1
    )
    contact = probe_contact(bank, idx, poses, stiffness_n_per_m=2000.0)
    assert torch.allclose(contact.penetration_m, press, atol=2e-4)
    assert torch.allclose(contact.force_n, torch.tensor([8.0, 0.0, 16.0, 0.0]), atol=0.4)
    assert contact.touching.tolist() == [True, True, True, False]
    assert contact.on_body.all()


def test_probe_off_the_back_is_reported(patients):
    bank = SkinBank(patients)
    pose = torch.tensor([[1.0, -0.1, 0.0, 1.0, 0.0, 0.0, 0.0]])  # 1 m to the side
    contact = probe_contact(bank, torch.tensor([0]), pose)
    assert not contact.on_body.item() and not contact.touching.item()
    assert contact.force_n.item() == 0.0


def test_bad_input(patients):
    with pytest.raises(InputError, match="expected a skin surface"):
        SkinBank([make_phantom(0, spacing_mm=4.0)])
    with pytest.raises(InputError, match="poses: expected finite"):
        probe_contact(SkinBank(patients), torch.tensor([0]), torch.full((1, 7), float("nan")))
