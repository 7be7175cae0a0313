"""Biplane imaging (task.observation.planes=2) and the shift correlation that reads it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policies.deploy.inputs import policy_frame
from policies.deploy.robot import RobotState
from policies.models.correlation import ShiftCorrelation
from sim.anatomy.patient_set import load_patients
from sim.errors import InputError
from sim.transforms import quat_to_matrix
from sim.ultrasound.biplane import plane_poses, side_by_side, turned_about_beam
from tasks import make_env
from tests.tasks_helpers import small_patient_set

IMAGES = {
    "name": "us_nav",
    "observation": {"images": True, "image_size": 32, "history": 2, "randomize_imaging": True, "planes": 1},
    "renderer": {"compile": False},
}


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


def test_the_second_plane_is_turned_a_quarter_about_the_beam():
    g = torch.Generator().manual_seed(0)
    quat = torch.randn(5, 4, generator=g)
    poses = torch.cat([torch.randn(5, 3, generator=g), quat / quat.norm(dim=-1, keepdim=True)], -1)
    turned = turned_about_beam(poses)
    before, after = quat_to_matrix(poses[:, 3:]), quat_to_matrix(turned[:, 3:])
    assert torch.allclose(turned[:, :3], poses[:, :3])
    assert torch.allclose(after[..., 0], before[..., 1], atol=1e-6)  # image x along the elevation axis
    assert torch.allclose(after[..., 1], -before[..., 0], atol=1e-6)
    assert torch.allclose(after[..., 2], before[..., 2], atol=1e-6)  # the same beam
    assert torch.allclose(turned[:, 3:].norm(dim=-1), torch.ones(5))
    assert plane_poses(poses, 2).shape == (10, 7) and plane_poses(poses, 1) is poses
    with pytest.raises(InputError, match="imaging planes"):
        plane_poses(poses, 3)


def test_planes_are_placed_side_by_side_per_acquisition():
    images = torch.arange(4.0)[:, None, None].expand(4, 2, 3)  # planes of 2 acquisitions, plane-major
    shown = side_by_side(images, 2)
    assert shown.shape == (2, 2, 6)
    assert (shown[0, :, :3] == 0).all() and (shown[0, :, 3:] == 2).all()  # acquisition 0: planes 0 and 2
    assert (shown[1, :, :3] == 1).all() and (shown[1, :, 3:] == 3).all()


def test_a_biplane_env_sees_its_image_plane_and_the_plane_across_it(patients):
    biplane = {**IMAGES, "observation": {**IMAGES["observation"], "planes": 2}}
    one, two = make_env(IMAGES, patients, 4, seed=3), make_env(biplane, patients, 4, seed=3)
    action = 2 * torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) - 1
    one.step(action)
    obs = two.step(action)[0]
    assert obs["image"].shape == (4, 3, 32, 64) and two.observation_spaces["image"].shape == (3, 32, 64)
    # The same draws: the left half is the single-plane image, the right half the turned plane,
    # rendered with the same gain, tissue and speckle.
    assert torch.allclose(obs["image"][..., :32], one.get_observations()["image"], atol=1e-5)
    across = two.renderer.render(turned_about_beam(two.poses), two.patient_idx, two.render_params(None))
    assert torch.allclose(obs["image"][:, 0, :, 32:], across, atol=1e-5)
    assert (obs["image"][:, 0, :, 32:] - obs["image"][:, 0, :, :32]).abs().mean() > 0.02  # another slice
    with pytest.raises(InputError, match="task.observation.planes"):
        make_env({**IMAGES, "observation": {**IMAGES["observation"], "planes": 3}}, patients, 2)


def test_a_robot_frame_is_resized_per_plane():
    state = RobotState(np.zeros(7), np.r_[0, 0, 0, 1, 0, 0, 0], 0.0, np.random.default_rng(0).random((100, 160)))
    assert policy_frame(state, 32, 2).shape == (1, 1, 32, 64)
    assert policy_frame(state, 32).shape == (1, 1, 32, 32)


def test_the_shift_correlation_peaks_at_the_shift():
    correlation = ShiftCorrelation((32, 64), pool=2, max_shift_rows=2, max_shift_columns=4)
    goal = torch.rand(3, 32, 64, generator=torch.Generator().manual_seed(2))
    newest = goal.clone()
    newest[:, :, :32] = torch.roll(goal[:, :, :32], shifts=(2, -6), dims=(1, 2))  # plane 1: 1 row down, 3 columns left
    newest[:, :, 32:] = torch.roll(goal[:, :, 32:], shifts=4, dims=2)  # plane 2: 2 columns right
    match = correlation(newest, goal).reshape(3, 2, 5, 9)
    peaks = [divmod(int(i), 9) for i in match.flatten(2).argmax(-1).flatten()]
    assert peaks == [(3, 1), (2, 6)] * 3  # (row shift + 2, column shift + 4)
    assert match.max() == pytest.approx(1.0, abs=0.15)  # normalised: a perfect match is about 1
    brighter = correlation(newest * 0.5 + 0.2, goal)  # another gain and offset: the same match
    assert torch.allclose(brighter, correlation(newest, goal), atol=1e-4)
    with pytest.raises(InputError, match="shift correlation image shape"):
        ShiftCorrelation((30, 64), pool=4, max_shift_rows=1, max_shift_columns=1)


def test_match_peaks_read_the_shift_between_cells():
    from policies.models.correlation import MatchPeaks

    peaks = MatchPeaks(planes=2, max_shift_rows=1, max_shift_columns=2, sharpness=50.0)
    volume = torch.zeros(1, 2, 3, 5)
    volume[0, 0, 2, 0] = 0.8  # plane 1: one row down, two columns left
    volume[0, 1, 1, 3] = volume[0, 1, 1, 4] = 0.6  # plane 2: a ridge between one and two columns right
    shift_rows, shift_columns, height = peaks(volume.flatten(1)).reshape(2, 3).T
    assert shift_rows.tolist() == pytest.approx([1.0, 0.0], abs=1e-3)
    assert shift_columns.tolist() == pytest.approx([-2.0, 1.5], abs=1e-3)
    assert height.tolist() == pytest.approx([0.8, 0.6])
    for bad in (0.0, float("inf"), float("nan"), "20"):
        with pytest.raises(InputError, match="match peak sharpness"):
            MatchPeaks(planes=1, max_shift_rows=1, max_shift_columns=1, sharpness=bad)


def rocked(image: torch.Tensor, angle_rad: float) -> torch.Tensor:
    """(B, H, W) images as a probe rocked by angle_rad in its image plane sees them: turned about
    the middle of the top row (the probe face), so what lies at depth d moves across by d tan(angle)."""
    b, h, w = image.shape
    rows, cols = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (h, w)), indexing="ij")
    x, d = cols - (w - 1) / 2, rows
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    src_x, src_d = c * x + s * d, -s * x + c * d  # where each pixel of the rocked image comes from
    grid = torch.stack([src_x / ((w - 1) / 2), src_d / ((h - 1) / 2) - 1], -1)[None].expand(b, -1, -1, -1)
    return F.grid_sample(image[:, None], grid, align_corners=True, padding_mode="border")[:, 0]


def test_depth_bands_read_the_rock_of_the_probe():
    """A probe rocked in its plane: the deep band's match peaks further across than the shallow
    band's (what lies at depth d moves by d tan(angle)), the other way when rocked back, more for
    a larger rock; the volume over the whole plane is the mean of the bands'."""
    from policies.models.correlation import FrameCorrelations, MatchPeaks

    coarse = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    smooth = F.interpolate(coarse, size=64, mode="bicubic")[:, 0]  # structure larger than a cell
    banded = ShiftCorrelation((64, 64), pool=4, max_shift_rows=2, max_shift_columns=4, bands=2)
    whole = ShiftCorrelation((64, 64), pool=4, max_shift_rows=2, max_shift_columns=4)
    peaks = MatchPeaks(planes=2, max_shift_rows=2, max_shift_columns=4, sharpness=20.0)

    def spread(angle_deg: float) -> torch.Tensor:
        """Deep band's column shift minus the shallow band's (cells), per image."""
        newest = rocked(smooth, math.radians(angle_deg))
        volumes = banded.volumes(newest[:, None], smooth)[:, 0, :, 0]  # (2 images, 1 plane, 2 bands, 5, 9)
        assert torch.allclose(volumes.mean(2).flatten(1), whole(newest, smooth), atol=1e-5)
        shallow, deep = peaks(volumes.flatten(1)).reshape(2, 2, 3)[:, :, 1].T
        return deep - shallow

    # 8 deg: a point 50 px deep moves 7 px (1.75 cells) across, one 14 px deep 0.5 cells.
    assert spread(0.0).abs().max() < 0.1
    assert (spread(8.0) < -1.0).all() and (spread(-8.0) > 1.0).all()  # rocked back: the other way
    assert (spread(4.0).abs() < spread(8.0).abs()).all() and (spread(4.0) < -0.3).all()
    frames = FrameCorrelations((3, 64, 64), peak_sharpness=20.0, pool=4, max_shift_rows=2, max_shift_columns=4, bands=2)
    assert frames.output_dim == 2 * (5 * 9 + 2 * 3)  # per frame: the plane's volume, then each band's peak
    for bad in (0, 3, "2"):  # 16 rows of cells: 3 bands do not divide them
        with pytest.raises(InputError, match="shift correlation bands"):
            ShiftCorrelation((64, 64), pool=4, max_shift_rows=1, max_shift_columns=1, bands=bad)


def test_rock_angles_read_the_rock_of_the_probe():
    """The goal turned about the probe face matches best at the angle the probe is rocked by:
    for texture, and for a bone surface across the image (its depth changes across the image,
    which depth bands do not see); rocked back, the other way. The unturned volume is the one
    without rock angles."""
    from policies.models.correlation import FrameCorrelations

    coarse = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    texture = F.interpolate(coarse, size=64, mode="bicubic")[:, 0]
    bone = torch.full((1, 64, 64), 0.3)  # soft tissue, a bright bone surface 28 px deep, its shadow
    bone[:, 28:31, 8:56], bone[:, 31:, 8:56] = 1.0, 0.1
    images = torch.cat([texture, F.avg_pool2d(bone[:, None], 3, 1, 1)[:, 0]])
    rocking = ShiftCorrelation((64, 64), pool=4, max_shift_rows=3, max_shift_columns=4, rocks=3, rock_step_deg=4.0)
    plain = ShiftCorrelation((64, 64), pool=4, max_shift_rows=3, max_shift_columns=4)
    for angle_deg in (-12, -8, 0, 8, 12):
        newest = rocked(images, math.radians(angle_deg))
        volumes = rocking.volumes(newest[:, None], images)[:, 0]  # (3 images, 1 plane, 7 angles, 1 band, 7, 9)
        best = volumes.flatten(3).amax(-1)[:, 0].argmax(-1)  # the angle of the highest match, per image
        assert best.tolist() == [3 + angle_deg // 4] * 3, angle_deg
        assert torch.allclose(rocking(newest, images), plain(newest, images), atol=1e-6)
    frames = FrameCorrelations((3, 64, 64), peak_sharpness=20.0, pool=4, max_shift_rows=3, max_shift_columns=4, rocks=3)
    assert frames.output_dim == 2 * (7 * 9 + 7 * 3)  # per frame: the unturned volume, then each angle's peak
    for bad in (-1, 1.0, True):
        with pytest.raises(InputError, match="shift correlation rocks"):
            ShiftCorrelation((64, 64), pool=4, max_shift_rows=1, max_shift_columns=1, rocks=bad)
    for bad in (0.0, 16.0, "4"):  # 3 x 16 deg: beyond 45
        with pytest.raises(InputError, match="shift correlation rock_step_deg"):
            ShiftCorrelation((64, 64), pool=4, max_shift_rows=1, max_shift_columns=1, rocks=3, rock_step_deg=bad)


def test_the_correlation_actor_reads_matches_not_pixels():
    from tensordict import TensorDict

    from policies.models.correlation import CorrelationModel, FrameCorrelations

    cfg = {"pool": 2, "max_shift_rows": 2, "max_shift_columns": 4}
    obs = TensorDict({"policy": torch.rand(4, 10), "image": torch.rand(4, 3, 32, 64)}, batch_size=[4])
    actor = CorrelationModel(obs, {"actor": ["policy", "image"]}, "actor", 5, hidden_dims=[32], correlation_cfg=cfg)
    volumes = actor.cnns["image"]
    assert isinstance(volumes, FrameCorrelations) and volumes.output_dim == 2 * 2 * 5 * 9
    assert not list(volumes.parameters())  # nothing per anatomy to memorise in the image path
    images = obs["image"]
    dimmer = images.clone()
    dimmer[:, -1] = images[:, -1] * 0.6 + 0.1  # the goal acquired with another gain
    assert torch.allclose(volumes(dimmer), volumes(images), atol=1e-4)
    assert not torch.allclose(volumes(images[:, [1, 0, 2]]), volumes(images))  # each frame its own volume
    with_peaks = FrameCorrelations((3, 32, 64), peak_sharpness=20.0, **cfg)
    assert with_peaks.output_dim == 2 * (2 * 5 * 9 + 2 * 3) and not list(with_peaks.parameters())
    assert torch.equal(with_peaks(images)[:, :90], volumes(images)[:, :90])  # the newest volume, then its peaks
    with pytest.raises(InputError, match="correlation_cfg"):
        CorrelationModel(obs, {"actor": ["policy", "image"]}, "actor", 5)
    with pytest.raises(InputError, match="correlation model input frames"):
        FrameCorrelations((1, 32, 64), **cfg)


def test_the_correlation_actor_exports_to_onnx_and_torchscript(tmp_path):
    """The FFT correlation survives the exporters: the deployed graph computes the trained actor."""
    import onnxruntime as ort
    from tensordict import TensorDict

    from policies.export import write_graphs
    from policies.models.correlation import CorrelationModel

    cfg = {"pool": 2, "max_shift_rows": 2, "max_shift_columns": 4, "bands": 2, "rocks": 1, "peak_sharpness": 20.0}
    obs = TensorDict({"policy": torch.rand(3, 10), "image": torch.rand(3, 3, 32, 64)}, batch_size=[3])
    actor = CorrelationModel(obs, {"actor": ["policy", "image"]}, "actor", 5, hidden_dims=[32], correlation_cfg=cfg)
    actor.eval()
    write_graphs(actor.as_onnx(verbose=False).eval(), ["policy", "image"], (obs["policy"], obs["image"]), tmp_path)
    session = ort.InferenceSession(str(tmp_path / "policy.onnx"))
    onnx_actions = session.run(None, {"policy": obs["policy"].numpy(), "image": obs["image"].numpy()})[0]
    with torch.no_grad():
        expected = actor(obs).numpy()
        traced = torch.jit.load(str(tmp_path / "policy.pt"))(obs["policy"], obs["image"]).numpy()
    assert np.allclose(onnx_actions, expected, atol=1e-5) and np.allclose(traced, expected, atol=1e-6)
