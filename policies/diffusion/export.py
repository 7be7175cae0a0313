"""Export a diffusion policy for robots: its encoder and denoiser graphs and the DDIM schedule.

The folder holds encoder.onnx / encoder.pt ((state_history (B, To, D)[, image_history (B, To, C,
S, S)]) -> cond, normalisation included), denoiser.onnx / denoiser.pt ((sample (B, H, A),
timestep (B,), cond) -> predicted noise), samples.npz and deploy.json, whose `policy` part holds
the horizons, the frame layout, the DDIM schedule and the action map (`policies.deploy.diffusion`).
Before the folder is put in place (atomically, `policies.export.write_atomically`) the runtime's
own loop (numpy DDIM over each engine's graphs) plans the recorded samples' chunks from their
recorded noise, and must match the PyTorch sampler within `DIFFUSION_TOLERANCE` per action.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from policies.deploy.diffusion import DiffusionGraphPolicy
from policies.deploy.policy import DIFFUSION_MANIFEST_FILES
from policies.deploy.schema import DENOISER_INPUTS, DIFFUSION_GRAPHS, DIFFUSION_TOLERANCE, ENCODER_INPUTS
from policies.diffusion.networks import DiffusionPolicyNet
from policies.diffusion.policy import DiffusionController
from policies.diffusion.schedule import ddim_schedule
from policies.export import verified_deploy, write_atomically, write_description, write_graphs
from sim.envs.base import BatchedEnv
from sim.robot.safety import SAMPLES

NOISE_SEED = 0  # the recorded samples' initial noise


def record_histories(controller: DiffusionController, env: BatchedEnv, count: int) -> dict[str, np.ndarray]:
    """`count` observation histories the policy meets in closed loop in `env` from a fresh reset:
    {"state_history": (count, To, D)[, "image_history": (count, To, C, S, S) in [0, 1]]}."""
    states, images, taken = [], [], 0
    obs = env.reset()
    with torch.inference_mode():
        while taken < count:
            actions = controller(obs)  # observes this step's frame, then acts
            states.append(controller.state.cpu())
            if controller.images is not None:
                images.append(controller.images.cpu().float() / 255.0)
            taken += len(actions)
            obs = env.step(actions)[0]
    out = {"state_history": torch.cat(states)[:count].numpy()}
    if images:
        out["image_history"] = torch.cat(images)[:count].numpy()
    return out


def policy_part(controller: DiffusionController) -> dict:
    """deploy.json's `policy` part for the controller's network and frame layout."""
    net, layout = controller.net, controller.layout
    cfg = net.config
    normalizer = net.normalizer
    zero, one = torch.zeros(1, 1, net.action_dim), torch.ones(1, 1, net.action_dim)
    with torch.no_grad():  # the normaliser's own map, x -> scale x + offset (it is affine)
        offset = normalizer.unnormalize_action(zero.to(normalizer.action_center.device)).cpu().reshape(-1)
        scale = normalizer.unnormalize_action(one.to(normalizer.action_center.device)).cpu().reshape(-1) - offset
    settings = ("num_train_timesteps", "num_inference_steps", "beta_schedule", "clip_sample", "prediction_type")
    return {
        "kind": "diffusion",
        "obs_horizon": net.obs_horizon,
        "horizon": net.horizon,
        "action_steps": net.action_steps,
        "state_input": layout.state_group,
        "image_input": layout.image_group,
        "image_channels": [index for _, index in layout.images],
        "schedule": ddim_schedule(*(cfg[k] for k in settings)),
        "action_scale": scale.tolist(),
        "action_offset": offset.tolist(),
    }


def write_diffusion_graphs(net: DiffusionPolicyNet, example: tuple[torch.Tensor, ...], folder: Path) -> None:
    """The encoder and denoiser graphs of `net` (both engines) in `folder`, traced on `example`:
    (state history (B, To, D)[, image history (B, To, C, S, S)]) on the CPU."""
    device = net.normalizer.action_center.device
    cpu = net.to("cpu")
    try:
        names = list(ENCODER_INPUTS[: len(example)])
        write_graphs(cpu.encoder_graph(), names, example, folder, DIFFUSION_GRAPHS["encoder"], "cond")
        with torch.no_grad():
            cond = cpu.encoder_graph()(*example)
        batch = len(cond)
        noise = torch.zeros(batch, net.horizon, net.action_dim)
        denoiser_example = (noise, torch.full((batch,), float(net.timesteps[0])), cond)
        write_graphs(
            cpu.denoiser_graph(), list(DENOISER_INPUTS), denoiser_example, folder, DIFFUSION_GRAPHS["denoiser"]
        )
    finally:
        net.to(device)


def write_diffusion(controller: DiffusionController, env: BatchedEnv, folder: Path, spec: dict, samples: int) -> None:
    """The verified export in the empty `folder` (module docstring)."""
    net = controller.net.eval()
    histories = record_histories(controller, env, samples)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn(samples, net.horizon, net.action_dim, generator=generator)
    device = net.normalizer.action_center.device
    state = torch.from_numpy(histories["state_history"]).to(device)
    images = histories.get("image_history")
    images = None if images is None else torch.from_numpy(images).to(device)
    reference = net.sample(state, images, noise.to(device)).cpu().numpy()
    np.savez_compressed(
        folder / "samples.npz",
        **{f"input/{k}": v for k, v in histories.items()},
        noise=noise.numpy(),
        actions=reference,
    )
    write_diffusion_graphs(net, tuple(torch.from_numpy(v[:2]) for v in histories.values()), folder)
    part = policy_part(controller)
    errors = {}
    for engine in ("onnx", "torchscript"):
        runtime = DiffusionGraphPolicy(folder, engine, {"policy": part})
        planned = runtime.plan(histories["state_history"], histories.get("image_history"), noise.numpy())
        errors[engine] = float(np.abs(planned - reference).max())
    what = "exported diffusion policy: the runtime's denoising loop differs from the PyTorch sampler"
    deploy = verified_deploy(spec, errors, DIFFUSION_TOLERANCE, samples, what, policy=part)
    write_description(folder, deploy, DIFFUSION_MANIFEST_FILES)


def export_diffusion(
    controller: DiffusionController, env: BatchedEnv, folder: str | Path, spec: dict, samples: int
) -> Path:
    """Write `folder` for robots from the closed-loop diffusion policy `controller` in `env`
    (module docstring); `samples` recorded histories verify it. Returns the folder."""
    samples = SAMPLES.check(samples, "export samples")
    return write_atomically(Path(folder), lambda work: write_diffusion(controller, env, work, spec, samples))
