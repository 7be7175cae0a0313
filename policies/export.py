"""Export a trained policy for robots: ONNX, TorchScript, deploy.json and recorded samples.

The exported graph is rsl-rl's deterministic actor (observation normaliser, CNN encoders and MLP;
the action mean, no sampling) with one input per observation group the actor reads ("policy",
and "image" for image policies) and one output, "actions". Both files are checked against the
training model on the recorded samples before the folder is moved into place (see
`export_policy`: a failed export leaves no deployable folder behind).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import platform
import secrets
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from policies.deploy.policy import ENGINES, MANIFEST_FILES, GraphPolicy, read_spec, write_manifest
from policies.deploy.schema import DEPLOY_FORMAT, TOLERANCE
from sim.envs.base import BatchedEnv
from sim.errors import InputError, require
from sim.robot.safety import SAMPLES

EXPORT_DIR = "exported"


def actor_inputs(model: torch.nn.Module) -> list[str]:
    """The observation groups an rsl-rl actor reads, in its exported graph's input order."""
    groups_1d, groups_2d = list(model.obs_groups), list(getattr(model, "obs_groups_2d", []))
    if len(groups_1d) != 1:
        raise InputError(f"actor observation groups {groups_1d}: expected exactly one 1-D group to export")
    return groups_1d + groups_2d


def policy_graph(model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """rsl-rl's exportable copy of an actor (CPU, eval mode) and its input names, in order."""
    return model.as_onnx(verbose=False).to("cpu").eval(), actor_inputs(model)


def record_samples(env: BatchedEnv, policy, names: list[str], count: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs {name: (count, ...)} the policy meets in `env` from a fresh reset, and its actions
    (count, A) for them (the training model's deterministic output)."""
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    outputs: list[torch.Tensor] = []
    obs, taken = env.reset(), 0
    with torch.inference_mode():
        while taken < count:
            actions = policy(obs)
            for n in names:
                inputs[n].append(obs[n].cpu())
            outputs.append(actions.cpu())
            taken += len(actions)
            obs = env.step(actions)[0]
    return {n: torch.cat(v)[:count].numpy() for n, v in inputs.items()}, torch.cat(outputs)[:count].numpy()


def write_graphs(
    module: torch.nn.Module,
    names: list[str],
    example: tuple[torch.Tensor, ...],
    folder: Path,
    files: dict[str, str] = ENGINES,
    output: str = "actions",
) -> None:
    """files["onnx"] (dynamic batch; default policy.onnx) and files["torchscript"] (TorchScript;
    policy.pt) with positional inputs `names` and one output named `output`."""
    batch = {0: torch.export.Dim("batch")}
    params = list(inspect.signature(module.forward).parameters.values())
    dynamic: tuple = tuple(batch for _ in names)
    if params[-1].kind is inspect.Parameter.VAR_POSITIONAL:  # rsl-rl's CNN graph: forward(obs_1d, *obs_2d)
        dynamic = (*dynamic[: len(params) - 1], dynamic[len(params) - 1 :])
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every pass
        torch.onnx.export(
            module, example, str(folder / files["onnx"]), input_names=names, output_names=[output],
            dynamo=True, external_data=False, opset_version=18, dynamic_shapes=dynamic,
        )  # fmt: skip
    torch.jit.trace(module, example).save(str(folder / files["torchscript"]))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("sonolab", "torch", "rsl-rl-lib", "onnx", "onnxruntime"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def export_policy(
    model: torch.nn.Module,
    env: BatchedEnv,
    folder: str | Path,
    spec: dict,
    samples: int = 128,
    tolerance: float = TOLERANCE,
) -> Path:
    """Write folder/{policy.onnx, policy.pt, samples.npz, deploy.json, manifest.json} for the actor
    `model`, atomically: everything is written into a temporary sibling folder, the graphs are
    checked against the model there, deploy.json and the manifest come last, the folder is read
    back as the runtime reads it (manifest and schema), and only then is it moved into place. An
    export that fails at any point leaves the previous folder (if any) and no temporary one.

    spec: deploy.json's content apart from format, versions and verification (the task's
    `deployment_spec`, safety limits, source). tolerance: the largest |exported - training model|
    accepted per action on the samples, at most TOLERANCE (an export may be stricter, never
    looser; a negative one refuses every export). Raises InputError if an exported graph differs
    from the model by more than that.
    """
    samples = SAMPLES.check(samples, "export samples")
    finite = isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and math.isfinite(tolerance)
    require(finite and tolerance <= TOLERANCE, "export tolerance", f"a finite number at most {TOLERANCE}", tolerance)
    return write_atomically(Path(folder), lambda work: write_verified(model, env, work, spec, samples, tolerance))


def write_atomically(folder: Path, write: Callable[[Path], None]) -> Path:
    """`write(work)` fills an empty temporary sibling `work` of `folder`, which then replaces
    `folder` (`replace_folder`); a write that fails or is killed leaves the previous folder (if
    any) and, by the next export, no temporary one. Returns folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in (*folder.parent.glob(f".{folder.name}.tmp-*"), *folder.parent.glob(f".{folder.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    work = sibling(folder, "tmp")
    try:
        write(work)
        replace_folder(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def write_verified(
    model: torch.nn.Module, env: BatchedEnv, folder: Path, spec: dict, samples: int, tolerance: float
) -> None:
    """The exported files in the empty `folder`, deploy.json and manifest.json only after both
    engines matched the training model within `tolerance` (InputError otherwise)."""
    module, names = policy_graph(model)
    model = model.eval()
    inputs, outputs = record_samples(env, model, names, samples)
    np.savez_compressed(folder / "samples.npz", **{f"input/{n}": v for n, v in inputs.items()}, actions=outputs)
    write_graphs(module, names, tuple(torch.from_numpy(inputs[n][:2]) for n in names), folder)
    errors = {
        engine: float(np.abs(GraphPolicy(folder / file, engine, names)(inputs) - outputs).max())
        for engine, file in ENGINES.items()
    }
    deploy = verified_deploy(
        spec, errors, tolerance, samples, "exported policy: outputs differ from the training model"
    )
    write_description(folder, deploy, MANIFEST_FILES)


def verified_deploy(spec: dict, errors: dict[str, float], tolerance: float, samples: int, what: str, **parts) -> dict:
    """deploy.json's content (spec, `parts`, versions, verification) once every engine's largest
    error in `errors` is within `tolerance`; InputError starting with `what` otherwise."""
    if not all(error <= tolerance for error in errors.values()):  # a NaN error fails too
        raise InputError(f"{what} by {errors} (tolerance {tolerance}); nothing was written")
    return {
        "format": DEPLOY_FORMAT,
        **spec,
        **parts,
        "versions": versions(),
        "verification": {"samples": samples, "max_abs_error": errors, "tolerance": tolerance},
    }


def write_description(folder: Path, deploy: dict, files: tuple[str, ...]) -> None:
    """deploy.json, then the manifest over `files`, then the runtime's own check of the folder (a
    folder it would refuse is never put in place); InputError for non-finite numbers."""
    try:
        text = json.dumps(deploy, indent=2, allow_nan=False)
    except ValueError as err:  # NaN or infinity somewhere in the task config: JSON has no such numbers
        raise InputError(f"deploy.json: expected finite numbers only, got {err}") from err
    (folder / "deploy.json").write_text(text)
    write_manifest(folder, files)
    read_spec(folder)


def sibling(folder: Path, kind: str) -> Path:
    """A new empty hidden folder beside `folder`, .<name>.<kind>-<random> (made with the umask's
    permissions, as the export folder itself would be)."""
    path = folder.parent / f".{folder.name}.{kind}-{secrets.token_hex(6)}"
    path.mkdir()
    return path


def replace_folder(new: Path, folder: Path) -> None:
    """Move `new` to `folder` by renames: an existing `folder` is renamed aside first and removed
    once `new` is in place, so `folder` is never a half-written export."""
    aside = sibling(folder, "old")
    try:
        if folder.exists():
            folder.rename(aside / folder.name)
        new.rename(folder)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
