"""The learned renderer: volume slices in the probe plane through TorchScript and ONNX generators.

Test patients are small soft-tissue boxes with a bone block at a known place; the probe looks
down +y (anterior) from the back, as on a prone patient. The generator networks are built here.
"""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sim.anatomy.bank import PatientBank
from sim.anatomy.patient import Patient
from sim.anatomy.tissues import TISSUE_ID
from sim.errors import InputError
from sim.ultrasound.learned import LearnedRenderer
from sim.ultrasound.probe import ProbeSpec

pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit:DeprecationWarning")  # TorchScript is what we load
SPACING = 0.001
# Probe frame -> patient frame: probe x -> +x, probe z (beam) -> +y, probe y -> -z.
DOWN_Y = [math.cos(-math.pi / 4), math.sin(-math.pi / 4), 0.0, 0.0]
PROBE = ProbeSpec(kind="linear", depth_m=0.04, width_m=0.04, image_height=41, image_width=41)
BONE_NORM = (700.0 + 1000.0) / 2000.0
SOFT_NORM = (40.0 + 1000.0) / 2000.0


def box_patient(bone_x_mm: tuple[int, int], bone_y_mm: tuple[int, int], name: str, size: int = 50) -> Patient:
    """A soft-tissue cube (size mm, origin at the centre of x and z, y from 0) with a bone block.

    The bone covers x in [bone_x_mm) (mm from the centre) and y in [bone_y_mm) (mm depth), all z.
    """
    tissue = np.full((size, size, size), TISSUE_ID["soft_tissue"], np.uint8)
    half = size // 2
    tissue[half + bone_x_mm[0] : half + bone_x_mm[1], bone_y_mm[0] : bone_y_mm[1], :] = TISSUE_ID["bone"]
    ct = np.where(tissue == TISSUE_ID["bone"], 700.0, 40.0).astype(np.float32)
    affine = np.diag([SPACING] * 3 + [1.0])
    affine[:3, 3] = [-half * SPACING, 0.0, -half * SPACING]
    return Patient(name, tissue, np.zeros_like(tissue), {}, affine, ct=ct)


@pytest.fixture(scope="module")
def bank() -> PatientBank:
    # Patient 0: bone 10-20 mm deep across x in [-5, 5) mm; patient 1: bone 25-30 mm deep at x in [5, 15) mm.
    return PatientBank([box_patient((-5, 5), (10, 20), "a"), box_patient((5, 15), (25, 30), "b", size=46)])


def pose(x: float = 0.0, y: float = 0.0, z: float = 0.0) -> list[float]:
    return [x, y, z] + DOWN_Y


class Generator(torch.nn.Module):
    """A tiny image-to-image network: two 3x3 convolutions and a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(4, 1, 3, padding=1),
            torch.nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Identity(torch.nn.Module):
    """A 1x1 convolution with weight 1 and bias 0, then a clamp: output = input on [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        torch.nn.init.ones_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).clamp(0, 1)


class Downsample(torch.nn.Module):
    """A network whose output is half the input size: the wrong shape for a renderer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 2)


def save_torchscript(net: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    return path


def save_onnx(net: torch.nn.Module, path: Path) -> Path:
    x = torch.zeros(2, 1, PROBE.image_height, PROBE.image_width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            net.eval(), (x,), str(path), dynamo=False, input_names=["slice"], output_names=["image"],
            dynamic_axes={"slice": {0: "n"}, "image": {0: "n"}},
        )  # fmt: skip
    return path


def test_torchscript_and_onnx_agree(bank, tmp_path):
    net = Generator()
    poses = torch.tensor([pose(), pose(0.003, 0.002, 0.01), pose(-0.004)])
    idx = torch.tensor([0, 1, 0])
    images = [
        LearnedRenderer(bank, PROBE, save(net, tmp_path / f"g{ext}")).render(poses, idx)
        for save, ext in ((save_torchscript, ".pt"), (save_onnx, ".onnx"))
    ]
    assert images[0].shape == (3, PROBE.image_height, PROBE.image_width)
    assert images[0].dtype == torch.float32
    assert 0.0 <= float(images[0].min()) and float(images[0].max()) <= 1.0
    assert float(images[0].std()) > 1e-3  # the network really saw the anatomy (random weights: low contrast)
    torch.testing.assert_close(images[0], images[1], atol=1e-5, rtol=0)


def test_identity_network_shows_the_ct_slice(bank, tmp_path):
    r = LearnedRenderer(bank, PROBE, save_torchscript(Identity(), tmp_path / "id.pt"))
    poses = torch.tensor([pose(), pose()])
    idx = torch.tensor([0, 1])
    images = r.render(poses, idx)
    torch.testing.assert_close(images, r.slice(poses, idx), atol=1e-6, rtol=0)
    # Pixel (row, column) sits at depth row mm and x = column - 20 mm: bone where the patient has it.
    a, b = images[0].numpy(), images[1].numpy()
    np.testing.assert_allclose(a[11:19, 16:24], BONE_NORM, atol=2e-3)
    np.testing.assert_allclose(a[2:8, :], SOFT_NORM, atol=2e-3)
    np.testing.assert_allclose(a[11:19, 27:], SOFT_NORM, atol=2e-3)
    np.testing.assert_allclose(b[26:29, 26:34], BONE_NORM, atol=2e-3)
    np.testing.assert_allclose(b[11:19, 16:24], SOFT_NORM, atol=2e-3)


def test_batch_mixes_poses_and_patients(bank, tmp_path):
    r = LearnedRenderer(bank, PROBE, save_torchscript(Generator(), tmp_path / "g.pt"))
    poses = torch.tensor([pose(), pose(0.005, 0.003), pose(), pose(-0.002, 0.0, 0.01)])
    idx = torch.tensor([0, 0, 1, 1])
    batch = r.render(poses, idx)
    singles = torch.cat([r.render(poses[i : i + 1], idx[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, singles, atol=1e-6, rtol=0)
    for i in range(4):
        for j in range(i):
            assert (batch[i] - batch[j]).abs().max() > 0.01, (i, j)


def test_labels_input_is_nearest_class(bank, tmp_path):
    r = LearnedRenderer(bank, PROBE, save_torchscript(Generator(), tmp_path / "g.pt"), input="labels")
    # Half a voxel off the grid: nearest lookup still gives whole class ids.
    labels = r.slice(torch.tensor([pose(0.0004, 0.0003)]), torch.tensor([0]))[0].numpy()
    assert set(np.unique(labels)) <= {float(TISSUE_ID["soft_tissue"]), float(TISSUE_ID["bone"])}
    assert (labels[12:18, 17:23] == TISSUE_ID["bone"]).all()


def test_outside_the_field_of_view_is_black(bank, tmp_path):
    convex = ProbeSpec(kind="convex", depth_m=0.03, fov_deg=60.0, radius_m=0.02, image_height=32, image_width=32)
    r = LearnedRenderer(bank, convex, save_torchscript(Identity(), tmp_path / "id.pt"))
    image = r.render(torch.tensor([pose()]), torch.tensor([0]))[0]
    _, inside = convex.scan_coordinates()
    assert (image[~inside] == 0).all()
    assert (image[inside] > 0.4).float().mean() > 0.95  # inside the body everywhere the beam reaches


def test_bad_inputs_raise_input_error(bank, tmp_path):
    with pytest.raises(InputError, match="not found"):
        LearnedRenderer(bank, PROBE, tmp_path / "missing.pt")
    (tmp_path / "model.h5").write_bytes(b"\0")
    with pytest.raises(InputError, match="extension"):
        LearnedRenderer(bank, PROBE, tmp_path / "model.h5")
    for ext in (".pt", ".onnx"):
        (tmp_path / f"junk{ext}").write_bytes(b"not a model at all")
        with pytest.raises(InputError, match="could not load"):
            LearnedRenderer(bank, PROBE, tmp_path / f"junk{ext}")
    for save, ext in ((save_torchscript, ".pt"), (save_onnx, ".onnx")):
        with pytest.raises(InputError, match="output shape"):
            LearnedRenderer(bank, PROBE, save(Downsample(), tmp_path / f"down{ext}"))
    with pytest.raises(InputError, match="input"):
        LearnedRenderer(bank, PROBE, save_torchscript(Identity(), tmp_path / "id.pt"), input="mri")
    labels_only = box_patient((-5, 5), (10, 20), "labels_only")
    labels_only.ct = None
    with pytest.raises(InputError, match="labels_only.*ct"):
        LearnedRenderer(PatientBank([labels_only]), PROBE, tmp_path / "id.pt")
    r = LearnedRenderer(bank, PROBE, tmp_path / "id.pt")
    with pytest.raises(InputError, match="poses"):
        r.render(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="patient_idx"):
        r.render(torch.tensor([pose()]), torch.tensor([5]))
