"""Export a trained policy for robots: ONNX, TorchScript, deploy.json and recorded samples.

The exported graph is rsl-rl's deterministic actor (observation normaliser, CNN encoders and MLP;
the action mean, no sampling) with one input per observation group the actor reads ("policy",
and "image" for image policies) and one output, "actions". Both files are checked against the
training model on the recorded samples before the folder is written out.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from policies.deploy.policy import DEPLOY_FORMAT, ENGINES, ExportedPolicy, sha256
from sim.envs.base import BatchedEnv
from sim.errors import InputError

EXPORT_DIR = "exported"
TOLERANCE = 1e-5  # max |exported - training model| per action on the samples


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


def write_graphs(module: torch.nn.Module, names: list[str], example: tuple[torch.Tensor, ...], folder: Path) -> None:
    """policy.onnx (dynamic batch) and policy.pt (TorchScript) with positional inputs `names`."""
    batch = {0: torch.export.Dim("batch")}
    params = list(inspect.signature(module.forward).parameters.values())
    dynamic: tuple = tuple(batch for _ in names)
    if params[-1].kind is inspect.Parameter.VAR_POSITIONAL:  # rsl-rl's CNN graph: forward(obs_1d, *obs_2d)
        dynamic = (*dynamic[: len(params) - 1], dynamic[len(params) - 1 :])
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every pass
        torch.onnx.export(
            module, example, str(folder / ENGINES["onnx"]), input_names=names, output_names=["actions"],
            dynamo=True, external_data=False, opset_version=18, dynamic_shapes=dynamic,
        )  # fmt: skip
    torch.jit.trace(module, example).save(str(folder / ENGINES["torchscript"]))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("sonolab", "torch", "rsl-rl-lib", "onnx", "onnxruntime"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def export_policy(model: torch.nn.Module, env: BatchedEnv, folder: str | Path, spec: dict, samples: int = 128) -> Path:
    """Write folder/{policy.onnx, policy.pt, samples.npz, deploy.json} for the actor `model`.

    spec: deploy.json's content apart from format, files, versions and verification (the task's
    `deployment_spec`, safety limits, source). Raises InputError if an exported graph differs from
    the model by more than TOLERANCE on the samples.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module, names = policy_graph(model)
    model = model.eval()
    inputs, outputs = record_samples(env, model, names, samples)
    np.savez_compressed(folder / "samples.npz", **{f"input/{n}": v for n, v in inputs.items()}, actions=outputs)
    write_graphs(module, names, tuple(torch.from_numpy(inputs[n][:2]) for n in names), folder)
    deploy = {"format": DEPLOY_FORMAT, **spec, "versions": versions()}
    deploy["files"] = {name: {"sha256": sha256(folder / name)} for name in (*ENGINES.values(), "samples.npz")}
    (folder / "deploy.json").write_text(json.dumps(deploy, indent=2))
    errors = {engine: float(np.abs(ExportedPolicy(folder, engine)(inputs) - outputs).max()) for engine in ENGINES}
    if max(errors.values()) > TOLERANCE:
        raise InputError(f"exported policy {folder}: outputs differ from the training model by {errors} (tolerance {TOLERANCE})")
    deploy["verification"] = {"samples": samples, "max_abs_error": errors, "tolerance": TOLERANCE}
    (folder / "deploy.json").write_text(json.dumps(deploy, indent=2))  # hashes cover the three data files only
    return folder
