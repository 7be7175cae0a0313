"""Renderer interface: shapes, devices, chunking, randomisation, presets and bad input."""

import numpy as np
import pytest
import torch
from slabs import poses_at, slab_patient

from sim.anatomy.bank import PatientBank
from sim.errors import InputError
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from sim.ultrasound.tissue import TissueTable

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def two_patients() -> PatientBank:
    a = slab_patient([("skin", 2), ("fat", 10), ("muscle", 30), ("bone", 5), ("soft_tissue", 40)], 80, 0.001, "a")
    b = slab_patient([("skin", 2), ("fat", 25), ("muscle", 50)], 80, 0.001, "b")
    b.split = "test"
    return PatientBank([a, b])


@pytest.mark.parametrize("preset", ["linear", "convex", "phased"])
def test_presets_render_batched_images(two_patients, preset):
    probe = ProbeSpec.preset(preset, image_height=64, image_width=48)
    r = Renderer(two_patients, probe)
    img = r.render(poses_at(0.004, 3), torch.tensor([0, 1, 0]))
    assert img.shape == (3, 64, 48) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert torch.equal(img[0], img[2])  # same pose and patient, same image
    assert not torch.equal(img[0], img[1])  # a batch mixes patients


@pytest.mark.parametrize("device", DEVICES)
def test_chunking_does_not_change_images(two_patients, device):
    bank = PatientBank(two_patients.patients, device=device)
    probe = ProbeSpec.preset("linear", image_height=40, image_width=32)
    poses = poses_at(0.004, 7, z_step=0.003).to(device)
    idx = torch.tensor([0, 1, 0, 1, 1, 0, 0], device=device)
    whole = Renderer(bank, probe).render(poses, idx)
    chunked = Renderer(bank, probe, config=RendererConfig(chunk_samples=3 * 40 * 32)).render(poses, idx)
    assert torch.allclose(whole, chunked)


def test_randomised_parameters_change_images_reproducibly(two_patients):
    r = Renderer(two_patients, ProbeSpec.preset("linear", image_height=40, image_width=32))
    poses, idx = poses_at(0.004, 4), torch.zeros(4, dtype=torch.long)
    p1 = r.sample_params(4, torch.Generator().manual_seed(1))
    p2 = r.sample_params(4, torch.Generator().manual_seed(1))
    a, b = r.render(poses, idx, p1), r.render(poses, idx, p2)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # each environment draws its own parameters
    assert not torch.equal(a, r.render(poses, idx))


def test_bank_memory_is_independent_of_environments(two_patients):
    r = Renderer(two_patients, ProbeSpec.preset("linear", image_height=40, image_width=32))
    fixed = two_patients.nbytes() + r.tile.numel() * r.tile.element_size()
    r.render(poses_at(0.004, 64), torch.zeros(64, dtype=torch.long))
    assert two_patients.nbytes() + r.tile.numel() * r.tile.element_size() == fixed
    assert two_patients.nbytes() == sum((np.array(p.shape) + 2).prod() for p in two_patients.patients)


def test_bad_poses_and_indices_are_rejected(two_patients):
    r = Renderer(two_patients, ProbeSpec.preset("linear", image_height=40, image_width=32))
    good = poses_at(0.004, 2)
    idx = torch.zeros(2, dtype=torch.long)
    nan = good.clone()
    nan[0, 1] = float("nan")
    with pytest.raises(InputError, match="poses: expected finite"):
        r.render(nan, idx)
    with pytest.raises(InputError, match=r"poses: expected shape \(N, 7\)"):
        r.render(good[:, :6], idx)
    zero_q = good.clone()
    zero_q[:, 3:] = 0
    with pytest.raises(InputError, match="non-zero quaternions"):
        r.render(zero_q, idx)
    with pytest.raises(InputError, match="patient_idx: expected values in"):
        r.render(good, torch.tensor([0, 5]))
    with pytest.raises(InputError, match="patient_idx: expected shape"):
        r.render(good, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"kind": "annular"}, "kind"),
        ({"frequency_mhz": -3.0}, "frequency_mhz"),
        ({"depth_m": 5.0}, "depth_m"),
        ({"kind": "convex", "fov_deg": 400.0}, "fov_deg"),
        ({"kind": "convex", "radius_m": 0.0}, "radius_m"),
        ({"lines": 1}, "lines"),
        ({"image_width": 0}, "image_width"),
        ({"elevation_focus_m": 0.0}, "elevation_focus_m"),
        ({"elevation_focus_m": 2.0}, "elevation_focus_m"),
    ],
)
def test_nonsense_probe_specs_are_rejected(overrides, field):
    with pytest.raises(InputError, match=f"probe {field}: expected"):
        ProbeSpec(**overrides)


def test_unknown_probe_preset_and_keys_are_rejected():
    with pytest.raises(InputError, match="probe preset 'nope'"):
        ProbeSpec.preset("nope")
    with pytest.raises(InputError, match=r"probe config keys \['colour'\]"):
        ProbeSpec.from_dict({"kind": "linear", "colour": "blue"})


def test_bad_tissue_and_renderer_settings_are_rejected(tmp_path):
    with pytest.raises(InputError, match="tissue override 'marrow'"):
        TissueTable.load().replace(marrow={"impedance_mrayl": 1.0})
    with pytest.raises(InputError, match="expected impedance_mrayl > 0"):
        TissueTable.load().replace(bone={"impedance_mrayl": -1.0})
    bad = tmp_path / "t.yaml"
    bad.write_text("air: {impedance_mrayl: 1, attenuation_db_cm_mhz: 1, echogenicity_db: null}\n")
    with pytest.raises(InputError, match="missing"):
        TissueTable.load(bad)
    with pytest.raises(InputError, match="renderer config keys"):
        RendererConfig.from_dict({"gain": 3})
    bank = PatientBank([slab_patient([("soft_tissue", 10)], 10, 0.001)])
    with pytest.raises(InputError, match="speckle_cells: expected a power of two"):
        Renderer(bank, ProbeSpec(), config=RendererConfig(speckle_cells=100))


@pytest.mark.slow
def test_compiled_renderer_matches_eager(two_patients):
    probe = ProbeSpec.preset("convex", image_height=48, image_width=48)
    poses, idx = poses_at(0.006, 3, z_step=0.004), torch.tensor([0, 1, 1])
    eager = Renderer(two_patients, probe).render(poses, idx)
    compiled = Renderer(two_patients, probe, config=RendererConfig(compile=True)).render(poses, idx)
    assert torch.allclose(eager, compiled, atol=1e-4)
