"""A learned renderer: the CT (or label) slice in the probe's plane through a generator network.

`LearnedRenderer` has the same interface as `Renderer`: `render(poses (N, 7), patient_idx (N,))`
gives (N, H, W) float32 images in [0, 1] on the bank's device. Per call it

1. extracts the slice in every environment's image plane at the output pixels (`PlaneSlicer`):
   normalised CT (HU + 1000) / 2000 in [0, 1], trilinear, or tissue class ids, nearest; 0
   outside the probe's field of view;
2. runs the generator on the batch (N, 1, H, W) -> (N, 1, H, W): a TorchScript file (`.pt`)
   or an ONNX file (`.onnx`, onnxruntime with the CUDA provider on CUDA devices when available);
3. clamps to [0, 1] and blanks pixels outside the field of view.

The generator should end in its own activation (sigmoid, tanh rescaled, ...); the clamp only
guards the range. The renderer has no physics knobs: `params` is accepted so that callers can
swap renderers, and ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sim.anatomy.bank import PatientBank
from sim.errors import InputError
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import RenderParams, render_inputs
from sim.ultrasound.slicing import PlaneSlicer

Generator = Callable[[torch.Tensor], torch.Tensor]  # (N, 1, H, W) float32 -> (N, 1, H, W)


def _load_torchscript(path: Path, device: torch.device) -> Generator:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        raise InputError(
            f"model '{path}': expected a TorchScript file (torch.jit.save), torch could not load it: {e}"
        ) from e
    module.eval()
    return module


def _load_onnx(path: Path, device: torch.device) -> Generator:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise InputError(f"model '{path}': ONNX models need onnxruntime (pip install onnxruntime)") from e
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for corrupt files
        raise InputError(f"model '{path}': expected an ONNX model, onnxruntime could not load it: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"model '{path}': expected one input (N, 1, H, W), got {[i.name for i in inputs]}")
    name = inputs[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        # Through host memory: onnxruntime takes numpy arrays; the copy is small next to the network.
        (y, *_) = session.run(None, {name: x.detach().cpu().numpy()})
        return torch.from_numpy(np.asarray(y)).to(x.device)

    return run


LOADERS = {".pt": _load_torchscript, ".onnx": _load_onnx}


def load_generator(path: str | Path, device: torch.device) -> Generator:
    """A generator network from a TorchScript (`.pt`) or ONNX (`.onnx`) file, ready on `device`."""
    path = Path(path)
    if path.suffix not in LOADERS:
        raise InputError(f"model '{path}': expected a .pt (TorchScript) or .onnx file, got extension {path.suffix!r}")
    if not path.is_file():
        raise InputError(f"model '{path}': file not found")
    return LOADERS[path.suffix](path, device)


class LearnedRenderer:
    """Ultrasound from a generator network applied to volume slices, for many environments at once.

    bank: the patients; probe: image geometry (the network sees and returns H x W images);
    model_path: `.pt` TorchScript or `.onnx` file; input: "ct" (normalised CT, needs every
    patient's CT) or "labels" (tissue class ids as float32); device: where the network runs
    (default: the bank's). Images come back on the bank's device.
    """

    def __init__(
        self,
        bank: PatientBank,
        probe: ProbeSpec,
        model_path: str | Path,
        input: str = "ct",
        device: torch.device | str | None = None,
    ) -> None:
        self.bank, self.probe = bank, probe
        self.device = torch.device(device) if device is not None else bank.device
        self.slicer = PlaneSlicer(bank, probe, input)
        self.model_path = Path(model_path)
        self.model = load_generator(self.model_path, self.device)
        self.inside = self.slicer.inside.to(self.device)
        # A dry run on two blank images catches wrong input or output shapes (and fixed batch sizes) now.
        self._generate(torch.zeros(2, probe.image_height, probe.image_width, device=self.device))

    def _generate(self, slices: torch.Tensor) -> torch.Tensor:
        """Network on slices (N, H, W) -> images (N, H, W) in [0, 1], outside the field of view 0."""
        x = slices[:, None].to(self.device, torch.float32)
        try:
            y = self.model(x)
        except Exception as e:  # TorchScript and onnxruntime raise their own types for bad shapes
            raise InputError(
                f"model '{self.model_path}': expected it to accept input {tuple(x.shape)} (N, 1, H, W), it failed: {e}"
            ) from e
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise InputError(
                f"model '{self.model_path}': expected output shape {tuple(x.shape)} (N, 1, H, W), got {got}"
            )
        return y[:, 0].float().clamp(0.0, 1.0) * self.inside

    @torch.no_grad()
    def slice(self, poses: torch.Tensor, patient_idx: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The network's input (N, H, W): the volume slice in each image plane (see `PlaneSlicer`);
        inputs checked as `Renderer.render` checks them unless check=False."""
        return self.slicer.slice(*render_inputs(self.bank, poses, patient_idx, check))

    @torch.no_grad()
    def render(
        self, poses: torch.Tensor, patient_idx: torch.Tensor, params: RenderParams | None = None, check: bool = True
    ) -> torch.Tensor:
        """Images (N, H, W) float32 in [0, 1] for probe poses (N, 7) on patients patient_idx (N,).

        `params` is ignored (the network has no physics knobs); it is accepted for `Renderer` parity,
        as is `check` (False skips the input checks and their host synchronisation).
        """
        slices = self.slice(poses, patient_idx, check)
        if slices.shape[0] == 0:
            return slices
        return self._generate(slices).to(self.bank.device)
