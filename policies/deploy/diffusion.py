"""The runtime side of an exported diffusion policy: history, DDIM denoising loop, action chunks.

deploy.json's `policy` part (its graphs `schema.DIFFUSION_GRAPHS` beside it) describes the policy: obs_horizon,
horizon and action_steps; which per-step inputs make a frame (`state_input`, and `image_input`
with its `image_channels`, quantised to 8 bits as the demonstrations were); the DDIM `schedule`
(`policies.diffusion.schedule`); and `action_scale`, `action_offset` (A,) mapping the sampled
normalised chunk to actions. Each call takes one control step's inputs (batch 1) and returns
that step's action (1, A): the frame joins the history (at an episode's first step the frame
fills it), and once the current chunk is used up the encoder graph and the denoiser graph, run
`num_inference_steps` times by `ddim_sample`, plan the next one from noise drawn with the
runtime's own generator. numpy and the graph engines only: no torch needed with onnx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from policies.deploy.policy import GraphPolicy
from policies.deploy.schema import DENOISER_INPUTS, DIFFUSION_GRAPHS, ENCODER_INPUTS
from policies.diffusion.schedule import check_schedule, ddim_sample
from sim.errors import require


def frames(state: np.ndarray, images: np.ndarray | None, channels: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """One step's (state (B, D), image group (B, C, S, S) in [0, 1]) -> (state, frame images
    (B, len(channels), S, S)) as the recorder stores them: the chosen channels rounded to 8 bits."""
    state = np.asarray(state, np.float32)
    if images is None:
        return state, None
    picked = np.clip(np.asarray(images, np.float32)[:, channels], 0.0, 1.0)
    return state, (np.round(picked * 255.0) / 255.0).astype(np.float32)


class DiffusionGraphPolicy:
    """The diffusion policy of an exported folder whose deploy.json `spec` has a `policy` part
    (checked by the schema first), run by `engine`; `seed` seeds the sampling noise."""

    def __init__(self, folder: str | Path, engine: str, spec: Mapping, seed: int = 0) -> None:
        folder, part = Path(folder), spec["policy"]
        self.spec, self.part = spec, part
        self.obs_horizon, self.horizon, self.action_steps = part["obs_horizon"], part["horizon"], part["action_steps"]
        self.state_input, self.image_input = part["state_input"], part["image_input"]
        self.channels = list(part["image_channels"])
        self.schedule = check_schedule(part["schedule"], "deploy.json policy.schedule")
        self.scale = np.asarray(part["action_scale"], np.float32)
        self.offset = np.asarray(part["action_offset"], np.float32)
        names = list(ENCODER_INPUTS if self.image_input is not None else ENCODER_INPUTS[:1])
        self.encoder = GraphPolicy(folder / DIFFUSION_GRAPHS["encoder"][engine], engine, names)
        self.denoiser = GraphPolicy(folder / DIFFUSION_GRAPHS["denoiser"][engine], engine, list(DENOISER_INPUTS))
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Forget the history and the chunk: the next call starts an episode."""
        self.state_history: np.ndarray | None = None
        self.image_history: np.ndarray | None = None
        self.chunk: np.ndarray | None = None
        self.used = 0

    def plan(self, state_history: np.ndarray, image_history: np.ndarray | None, noise: np.ndarray) -> np.ndarray:
        """Action chunks (B, horizon, A), from the first observed step, for histories (B, To, D) and
        (B, To, C, S, S) (or None) and initial noise (B, horizon, A)."""
        inputs = {"state_history": state_history}
        if image_history is not None:
            inputs["image_history"] = image_history
        cond = self.encoder(inputs)

        def denoise(sample: np.ndarray, timestep: np.ndarray) -> np.ndarray:
            return self.denoiser({"sample": sample, "timestep": timestep, "cond": cond})

        normalised = ddim_sample(self.schedule, denoise, np.asarray(noise, np.float32))
        return normalised * self.scale + self.offset

    def observe(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Add one step's frame (batch 1) to the history."""
        require(self.state_input in inputs, "policy inputs", f"{self.state_input!r}", sorted(inputs))
        image = inputs.get(self.image_input) if self.image_input is not None else None
        require(self.image_input is None or image is not None, "policy inputs", f"{self.image_input!r}", sorted(inputs))
        state, images = frames(inputs[self.state_input], image, self.channels)
        if self.state_history is None:
            self.state_history = np.repeat(state[:, None], self.obs_horizon, 1)
            self.image_history = None if images is None else np.repeat(images[:, None], self.obs_horizon, 1)
            return
        self.state_history = np.concatenate([self.state_history[:, 1:], state[:, None]], 1)
        if images is not None:
            self.image_history = np.concatenate([self.image_history[:, 1:], images[:, None]], 1)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """This step's action (1, A) for its inputs {name: (1, ...)}."""
        self.observe(inputs)
        if self.chunk is None or self.used == self.action_steps:
            noise = self.rng.standard_normal((1, self.horizon, len(self.scale))).astype(np.float32)
            first = self.obs_horizon - 1
            self.chunk = self.plan(self.state_history, self.image_history, noise)[:, first : first + self.action_steps]
            self.used = 0
        self.used += 1
        return np.clip(self.chunk[:, self.used - 1], -1.0, 1.0)
