"""Load an exported policy folder (deploy.json, policy.onnx, policy.pt) and run it.

Engines: "onnx" (ONNX Runtime, CPU) or "torchscript" (torch.jit). File hashes in deploy.json are
checked first, so a policy file that does not belong to its description is never run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from sim.errors import InputError

DEPLOY_FORMAT = "sonolab-deploy/1"
ENGINES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_spec(folder: str | Path) -> dict:
    """deploy.json of an exported folder, checked: format and the hashes of the files it lists."""
    folder = Path(folder)
    path = folder / "deploy.json"
    if not path.is_file():
        raise InputError(f"exported policy {folder}: expected a folder written by scripts/export.py with deploy.json")
    spec = json.loads(path.read_text())
    if spec.get("format") != DEPLOY_FORMAT:
        raise InputError(f"{path}: expected format {DEPLOY_FORMAT!r}, got {spec.get('format')!r}")
    for name, entry in spec["files"].items():
        if not (folder / name).is_file() or sha256(folder / name) != entry["sha256"]:
            raise InputError(f"{folder / name}: missing or its sha256 differs from deploy.json (re-run scripts/export.py)")
    return spec


class ExportedPolicy:
    """A deterministic policy: {input name: (B, ...) float32} -> actions (B, A) float32."""

    def __init__(self, folder: str | Path, engine: str = "onnx") -> None:
        if engine not in ENGINES:
            raise InputError(f"engine {engine!r}: expected one of {sorted(ENGINES)}")
        self.folder, self.engine = Path(folder), engine
        self.spec = read_spec(folder)
        self.input_names = [i["name"] for i in self.spec["observation"]["inputs"]]
        path = str(self.folder / ENGINES[engine])
        if engine == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # one robot, small networks: threads cost more than they give
            self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            import torch

            self._module = torch.jit.load(path, map_location="cpu").eval()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(f"policy inputs: expected {self.input_names}, missing {missing}")
        arrays = [np.ascontiguousarray(inputs[n], np.float32) for n in self.input_names]
        if self.engine == "onnx":
            return self._session.run(None, dict(zip(self.input_names, arrays)))[0]
        import torch

        with torch.inference_mode():
            return self._module(*[torch.from_numpy(a) for a in arrays]).numpy()
