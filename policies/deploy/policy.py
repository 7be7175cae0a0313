"""Load an exported policy folder (deploy.json, policy.onnx, policy.pt) and run it.

Engines: "onnx" (ONNX Runtime, CPU) or "torchscript" (torch.jit). The folder's manifest.json
(the sha256 of deploy.json and of every file it describes) is checked first, then deploy.json's
schema (`policies.deploy.schema`), so a policy file that does not belong to its description, or
a description outside the hard safety bounds, is never run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from policies.deploy.schema import validate_spec
from sim.errors import InputError, require

ENGINES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
MANIFEST = "manifest.json"
MANIFEST_FILES = ("deploy.json", *ENGINES.values(), "samples.npz")  # every file of an exported folder but the manifest
# a diffusion policy's folder has its two graphs per engine instead (policies.deploy.schema.DIFFUSION_GRAPHS)
DIFFUSION_MANIFEST_FILES = (
    "deploy.json", "encoder.onnx", "encoder.pt", "denoiser.onnx", "denoiser.pt", "samples.npz"
)  # fmt: skip
SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_files(spec: dict) -> tuple[str, ...]:
    """The files deploy.json `spec`'s folder must hold: a diffusion policy's (a `policy` part) or an actor's."""
    return DIFFUSION_MANIFEST_FILES if "policy" in spec else MANIFEST_FILES


def write_manifest(folder: Path, files: tuple[str, ...] = MANIFEST_FILES) -> None:
    """folder/manifest.json: {file name: sha256} over `files` (written last, by export)."""
    (folder / MANIFEST).write_text(json.dumps({name: sha256(folder / name) for name in files}, indent=2))


def check_manifest(folder: Path) -> set[str]:
    """The files folder/manifest.json lists, once it lists exactly MANIFEST_FILES or
    DIFFUSION_MANIFEST_FILES and each file's sha256 (InputError otherwise)."""
    path = folder / MANIFEST
    require(path.is_file(), str(path), "the manifest scripts/export.py writes (re-run it)", "no such file")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: expected JSON {{file: sha256}}, got unreadable text ({err})") from err
    valid = (
        isinstance(manifest, dict)
        and set(manifest) in (set(MANIFEST_FILES), set(DIFFUSION_MANIFEST_FILES))
        and all(isinstance(h, str) and SHA256.fullmatch(h) for h in manifest.values())
    )
    require(
        valid,
        str(path),
        f"{{file: sha256}} for exactly {list(MANIFEST_FILES)} or {list(DIFFUSION_MANIFEST_FILES)}",
        manifest if isinstance(manifest, dict) else type(manifest).__name__,
    )
    for name in manifest:
        if not (folder / name).is_file() or sha256(folder / name) != manifest[name]:
            raise InputError(
                f"{folder / name}: missing or its sha256 differs from {MANIFEST} (re-run scripts/export.py)"
            )
    return set(manifest)


def read_spec(folder: str | Path) -> dict:
    """deploy.json of an exported folder, checked: the manifest's hashes, then the schema."""
    folder = Path(folder)
    path = folder / "deploy.json"
    if not path.is_file():
        raise InputError(f"exported policy {folder}: expected a folder written by scripts/export.py with deploy.json")
    files = check_manifest(folder)
    try:
        spec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: expected JSON, got unreadable text ({err})") from err
    validate_spec(spec, folder)
    require(
        files == set(manifest_files(spec)),
        str(folder / MANIFEST),
        f"the files of {'a diffusion policy' if 'policy' in spec else 'an actor'}: {list(manifest_files(spec))}",
        sorted(files),
    )
    return spec


class GraphPolicy:
    """A policy graph file run by `engine`: {input name: (B, ...) float32} -> actions (B, A)
    float32, the graph's positional inputs in the order of `input_names`."""

    def __init__(self, path: Path, engine: str, input_names: list[str]) -> None:
        if engine not in ENGINES:
            raise InputError(f"engine {engine!r}: expected one of {sorted(ENGINES)}")
        self.engine, self.input_names = engine, list(input_names)
        if engine == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # one robot, small networks: threads cost more than they give
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:
            import torch

            self._module = torch.jit.load(str(path), map_location="cpu").eval()

    def reset(self) -> None:
        """A new episode: a graph keeps no state between steps."""

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


class ExportedPolicy(GraphPolicy):
    """The deterministic policy of an exported folder, run only after `read_spec` accepted it."""

    def __init__(self, folder: str | Path, engine: str = "onnx") -> None:
        self.folder = Path(folder)
        self.spec = read_spec(folder)
        super().__init__(
            self.folder / ENGINES.get(engine, ""), engine, [i["name"] for i in self.spec["observation"]["inputs"]]
        )


def open_policy(folder: str | Path, engine: str = "onnx"):
    """The policy of an exported folder, after `read_spec` accepted it: an `ExportedPolicy` (one
    actor graph) or, for a deploy.json with a `policy` part, a `DiffusionGraphPolicy`. Either maps
    one step's inputs to actions and has `spec` and `reset()` (called at each episode's start)."""
    spec = read_spec(folder)
    if "policy" in spec:
        from policies.deploy.diffusion import DiffusionGraphPolicy  # numpy only; imported where used

        if engine not in ENGINES:
            raise InputError(f"engine {engine!r}: expected one of {sorted(ENGINES)}")
        return DiffusionGraphPolicy(folder, engine, spec)
    return ExportedPolicy(folder, engine)
