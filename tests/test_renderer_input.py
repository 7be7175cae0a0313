"""The renderer refuses bad poses, indices and parameters at its entry; bad actions never reach an environment's
state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from slabs import poses_at, slab_patient

from sim.anatomy.bank import PatientBank
from sim.anatomy.patient_set import load_patients
from sim.errors import InputError
from sim.ultrasound.learned import LearnedRenderer
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from sim.ultrasound.tissue import TissueTable
from tasks import make_env
from tests.tasks_helpers import small_patient_set


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    bank = PatientBank([slab_patient([("skin", 2), ("fat", 10), ("muscle", 20)], 40, 0.001)])
    return Renderer(bank, ProbeSpec.preset("linear", image_height=32, image_width=24))


@pytest.mark.parametrize("name", ["gain_db", "dynamic_range_db", "frequency_mhz", "tissue"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_parameters_are_refused_naming_them(renderer, name, bad):
    params = renderer.sample_params(2, torch.Generator().manual_seed(0))
    getattr(params, name).view(-1)[0] = bad
    with pytest.raises(InputError, match=rf"params\.{name}: expected finite values"):
        renderer.render(poses_at(0.004, 2), torch.zeros(2, dtype=torch.long), params)


def test_out_of_range_parameters_are_refused(renderer):
    params = renderer.default_params(2)
    params.dynamic_range_db = torch.tensor([60.0, 0.0])
    with pytest.raises(InputError, match="params.dynamic_range_db: expected values > 0 dB"):
        renderer.render(poses_at(0.004, 2), torch.zeros(2, dtype=torch.long), params)


def test_scatterer_densities_outside_0_to_1_are_refused(renderer):
    params = renderer.default_params(2)
    params.tissue = params.tissue.clone()
    params.tissue[1, 4, 3] = 0.0
    named = r"params\.tissue\[\.\.\., 3\] \(scatterer density\): expected values in \(0, 1\]"
    with pytest.raises(InputError, match=named):
        renderer.render(poses_at(0.004, 2), torch.zeros(2, dtype=torch.long), params)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InputError, match="fat: expected .*scatterer_density in \\(0, 1\\]"):
            TissueTable.load().replace(fat={"scatterer_density": bad})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"gain_db": math.nan}, "gain_db"),
        ({"dynamic_range_db": 0.0}, "dynamic_range_db"),
        ({"chunk_samples": 0}, "chunk_samples"),
        ({"randomization": {"gain_db": (-6.0, math.inf)}}, r"randomization.gain_db\[1\]"),
        ({"randomization": {"frequency_scale": (0.0, 1.0)}}, r"randomization.frequency_scale\[0\]"),
        ({"randomization": {"dynamic_range_db": (70.0, 50.0)}}, r"randomization.dynamic_range_db\[1\]"),
    ],
)
def test_settings_that_would_sample_nonsense_are_refused(overrides, key):
    with pytest.raises(InputError, match=rf"renderer[ .]{key}: expected"):
        RendererConfig(**overrides)


@pytest.mark.parametrize("idx", [torch.tensor([0.0, 0.7]), torch.tensor([True, False]), [0, 0]])
def test_non_integer_patient_indices_are_refused(renderer, idx):
    with pytest.raises(InputError, match="patient_idx: expected"):
        renderer.render(poses_at(0.004, 2), idx)


def test_out_of_range_patient_indices_are_refused(renderer):
    for idx in ([0, 1], [-1, 0]):
        with pytest.raises(InputError, match=r"patient_idx: expected values in \[0, 1\)"):
            renderer.render(poses_at(0.004, 2), torch.tensor(idx))


@pytest.mark.parametrize("scale", [1e20, 1.01, 0.5])
def test_non_unit_quaternions_are_refused(renderer, scale):
    poses = poses_at(0.004, 2)
    poses[1, 3:] *= scale
    with pytest.raises(InputError, match=r"poses\[1\]: expected a unit quaternion"):
        renderer.render(poses, torch.zeros(2, dtype=torch.long))


def test_nearly_unit_quaternions_and_unchecked_calls_render_the_same(renderer):
    poses, idx = poses_at(0.004, 2), torch.zeros(2, dtype=torch.long)
    near = poses.clone()
    near[:, 3:] *= 1 + 5e-4
    assert torch.allclose(renderer.render(near, idx), renderer.render(poses, idx), atol=1e-2)
    assert torch.equal(renderer.render(poses, idx), renderer.render(poses, idx, check=False))


def test_an_empty_batch_gives_an_empty_result(renderer):
    empty = renderer.render(torch.zeros(0, 7), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 32, 24) and empty.dtype == torch.float32
    assert renderer.render_lines(torch.zeros(0, 7), torch.zeros(0, dtype=torch.long)).shape[0] == 0


def test_the_learned_renderer_checks_the_same_inputs(renderer, tmp_path):
    bank = PatientBank([slab_patient([("skin", 2), ("fat", 10)], 20, 0.001)])
    model = tmp_path / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(model))
    learned = LearnedRenderer(bank, ProbeSpec.preset("linear", image_height=16, image_width=16), model, input="labels")
    with pytest.raises(InputError, match="patient_idx: expected an integer tensor"):
        learned.render(poses_at(0.004, 1), torch.zeros(1))
    poses = poses_at(0.004, 1)
    poses[:, 3:] *= 1e20
    with pytest.raises(InputError, match="unit quaternion"):
        learned.render(poses, torch.zeros(1, dtype=torch.long))


@pytest.fixture(scope="module")
def env():
    patients = load_patients(small_patient_set(), "train", progress=False)
    return make_env({"name": "us_nav_state", "observation": {"images": False}}, patients, num_envs=4, seed=0)


@settings(max_examples=30, deadline=None)
@given(actions=arrays(np.float64, (4, 5), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_arbitrary_actions_keep_the_state_finite_and_in_the_workspace(env, actions):
    env.step(torch.from_numpy(actions))
    for name in ("xz", "yaw", "tilt", "q", "poses", "force"):
        assert torch.isfinite(getattr(env, name)).all(), name
    low, high = env.box_low[env.patient_idx], env.box_high[env.patient_idx]
    assert ((env.xz >= low - 1e-6) & (env.xz <= high + 1e-6)).all()
    assert (env.tilt.norm(dim=-1) <= env.cfg.actions.max_tilt_rad + 1e-5).all()


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (4, 5, 1), (20,)])
def test_a_wrong_action_shape_names_the_expected_one(env, shape):
    with pytest.raises(InputError, match=r"actions: expected shape \(4, 5\)"):
        env.step(torch.zeros(shape))


@settings(max_examples=60, deadline=None)
@given(
    pose=arrays(np.float64, (3, 7), elements=st.floats(-1.0, 1.0)),
    bad=st.sampled_from([None, None, None, math.nan, math.inf, -math.inf, 1e20]),
    where=st.integers(0, 20),
    unit=st.booleans(),
    index=st.sampled_from(["zeros", "zeros", "zeros", "ones", "float"]),
)
def test_any_render_input_gives_an_error_or_a_valid_image(renderer, pose, bad, where, unit, index):
    """Poses near the skin (offsets up to 1 mm) with normalised or raw quaternions, optionally one NaN,
    infinite or huge value, and valid, out-of-range or float indices: valid input gives finite images in
    [0, 1], invalid input a clear error; a huge but finite position (far off the body) may give either."""
    pose = pose.copy()
    quat = torch.from_numpy(pose[:, 3:])
    norm = quat.norm(dim=-1, keepdim=True)
    if unit and (norm > 1e-3).all():
        pose[:, 3:] = (quat / norm).numpy()
    if bad is not None:
        pose.reshape(-1)[where] = bad
    poses = poses_at(0.004, 3).double()
    poses[:, :3] += torch.from_numpy(pose[:, :3]) * 1e-3
    poses[:, 3:] = torch.from_numpy(pose[:, 3:])
    patient_idx = {
        "zeros": torch.zeros(3, dtype=torch.long),
        "ones": torch.ones(3, dtype=torch.long),
        "float": torch.zeros(3),
    }[index]
    valid = bad is None and unit and bool((norm > 1e-3).all()) and index == "zeros"
    far_off = bad == 1e20 and where % 7 < 3 and unit and bool((norm > 1e-3).all()) and index == "zeros"
    if not (valid or far_off):
        with pytest.raises(InputError):
            renderer.render(poses.float(), patient_idx)
        return
    try:
        images = renderer.render(poses.float(), patient_idx)
    except InputError:
        assert far_off, "valid input was refused"
        return
    assert images.shape == (3, 32, 24)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
