"""The diffusion policy's networks (Chi et al. 2023, CNN variant) and `DiffusionPolicyNet`.

`ObservationEncoder` turns the last obs_horizon observations (state and, for image tasks, the
ultrasound images) into one conditioning vector; `ConditionalUnet1D` predicts the noise in a
chunk of `horizon` normalised actions from the noisy chunk, the diffusion step and that vector
(FiLM); `DiffusionPolicyNet` adds the normalisation, the training loss (DDPM noising) and DDIM
sampling, and the two ONNX-exportable graphs the robot runtime chains with the numpy sampler of
policies/diffusion/schedule.py.

Action chunks follow diffusion_policy: a chunk of `horizon` actions starts at the first observed
step, so with the current step t (the last of the obs_horizon observed steps t - obs_horizon + 1
.. t), chunk[:, k] is the action at step t - obs_horizon + 1 + k and the executed actions, from
the current step on, are chunk[:, obs_horizon - 1 : obs_horizon - 1 + action_steps] (what `act`
returns). Training chunks must be aligned the same way.

Forward passes and the sampling loop never read tensor data back to the host (the DDIM
timesteps are Python ints fixed at construction), so they run on CPU and CUDA alike without syncs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from policies.diffusion.normalizer import Normalizer
from policies.diffusion.schedule import SETTINGS, check_settings
from sim.errors import InputError, require, require_int

# The image CNN's layers: a strided 8 x 8 patch embedding first (each output pixel sees every input
# pixel of its 4 x 4 cell, so no speckle is skipped), then 3 x 3 convolutions; 64 x 64 images ->
# 8 x 8 feature maps for the spatial softmax. Sized for CPUs: a training step of batch 256 with two
# images per step costs about a sixth of four 3 x 3 layers' (32, 32, 64, 64).
CONV_CHANNELS = (16, 32, 64)
CONV_KERNELS = (8, 3, 3)
CONV_STRIDES = (4, 2, 1)
IMAGE_GROUPS = 8  # GroupNorm groups in the image CNN
KEYPOINTS = 32  # spatial-softmax keypoints per image
STATE_HIDDEN = 256  # the state MLP's hidden width


def setting(what: str, key: str) -> str:
    """The name of setting `key` in messages: `what.key`, or `key` alone when `what` is empty."""
    return f"{what}.{key}" if what else key


def check_unet(
    down_dims: object, kernel_size: object, n_groups: object, step_embed_dim: object, what: str = ""
) -> tuple[tuple[int, ...], int, int, int]:
    """The U-Net's settings checked (down_dims as a tuple of ints); InputError naming `what.<key>`."""
    groups = require_int(n_groups, setting(what, "n_groups"), 1)
    name = setting(what, "down_dims")
    require(
        isinstance(down_dims, Sequence) and not isinstance(down_dims, str) and len(down_dims) >= 1,
        name,
        "a non-empty list of channel counts",
        repr(down_dims),
    )
    dims = tuple(require_int(d, f"{name}[{i}]", 1) for i, d in enumerate(down_dims))
    for i, d in enumerate(dims):  # GroupNorm splits every block's channels into n_groups groups
        require(d % groups == 0, f"{name}[{i}]", f"a multiple of {setting(what, 'n_groups')} = {groups}", d)
    kernel = require_int(kernel_size, setting(what, "kernel_size"), 1)
    require(kernel % 2 == 1, setting(what, "kernel_size"), "an odd int (same-length convolutions)", kernel)
    embed = require_int(step_embed_dim, setting(what, "step_embed_dim"), 4)
    require(embed % 2 == 0, setting(what, "step_embed_dim"), "an even int (sine and cosine halves)", embed)
    return dims, kernel, groups, embed


def check_encoder(
    state_dim: object,
    image_channels: object,
    image_size: object,
    obs_horizon: object,
    feature_dim: object,
    what: str = "",
) -> tuple[int, int, int, int, int]:
    """The observation encoder's settings checked; InputError naming `what.<key>`. image_size may
    be 0 (and is ignored) when image_channels is 0 (a state-only task)."""
    channels = require_int(image_channels, setting(what, "image_channels"), 0)
    return (
        require_int(state_dim, setting(what, "state_dim"), 1),
        channels,
        require_int(image_size, setting(what, "image_size"), 1 if channels else 0),
        require_int(obs_horizon, setting(what, "obs_horizon"), 1),
        require_int(feature_dim, setting(what, "feature_dim"), 1),
    )


# -- the U-Net


class SinusoidalStepEmbedding(nn.Module):
    """(B,) float diffusion step -> (B, dim): sines and cosines of the step times `dim / 2`
    log-spaced frequencies from 1 to 1/10000 (the transformer position embedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(torch.arange(half) * (-math.log(10000) / (half - 1)))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, step: torch.Tensor) -> torch.Tensor:
        angles = step[:, None] * self.frequencies
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


def conv_block(in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> nn.Sequential:
    """(B, in, L) -> (B, out, L): same-length Conv1d, GroupNorm, Mish."""
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(n_groups, out_channels),
        nn.Mish(),
    )


class ConditionalResidualBlock1D(nn.Module):
    """(B, in, L), cond (B, cond_dim) -> (B, out, L): two conv blocks, the first one's output
    scaled and shifted per channel by a linear map of the condition (FiLM), plus a residual."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.first = conv_block(in_channels, out_channels, kernel_size, n_groups)
        self.second = conv_block(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.second(self.first(x) * scale + bias) + self.residual(x)


class ConditionalStage(nn.Module):
    """(B, in, L), cond -> (B, out, L): two conditional residual blocks (in -> out -> out)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                ConditionalResidualBlock1D(in_channels, out_channels, cond_dim, kernel_size, n_groups),
                ConditionalResidualBlock1D(out_channels, out_channels, cond_dim, kernel_size, n_groups),
            ]
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cond)
        return x


class ConditionalUnet1D(nn.Module):
    """diffusion_policy's temporal U-Net: noisy action chunk, step and condition -> predicted noise.

    One stage per entry of down_dims, each followed by a stride-2 convolution that halves the
    horizon (all but the last); two middle blocks; then back up with the skip connections and
    transposed convolutions that double it. As in diffusion_policy, the up path concatenates the
    outputs of every down stage but the first (full resolution) one. The horizon H must be a
    multiple of 2 ** (len(down_dims) - 1) (`check_horizon`).
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        action_dim = require_int(action_dim, "action_dim", 1)
        cond_dim = require_int(cond_dim, "cond_dim", 0)
        dims, kernel_size, n_groups, embed = check_unet(down_dims, kernel_size, n_groups, step_embed_dim)
        self.halvings = len(dims) - 1
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(embed), nn.Linear(embed, 4 * embed), nn.Mish(), nn.Linear(4 * embed, embed)
        )
        film_dim = embed + cond_dim

        def stage(in_channels: int, out_channels: int) -> ConditionalStage:
            return ConditionalStage(in_channels, out_channels, film_dim, kernel_size, n_groups)

        pairs = list(zip(dims[:-1], dims[1:]))  # (channels, next level's channels)
        self.down = nn.ModuleList(stage(c_in, c_out) for c_in, c_out in zip((action_dim, *dims[:-1]), dims))
        self.downsample = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in dims[:-1])
        self.mid = stage(dims[-1], dims[-1])
        self.up = nn.ModuleList(stage(2 * c_deep, c) for c, c_deep in reversed(pairs))
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(c, c, 4, stride=2, padding=1) for c, _ in reversed(pairs))
        self.final = nn.Sequential(
            conv_block(dims[0], dims[0], kernel_size, n_groups), nn.Conv1d(dims[0], action_dim, 1)
        )

    def check_horizon(self, horizon: object, what: str = "horizon") -> int:
        """`horizon` if the U-Net can halve it len(down_dims) - 1 times; InputError naming `what` otherwise."""
        horizon = require_int(horizon, what, 1)
        factor = 2**self.halvings
        require(
            horizon % factor == 0, what, f"a multiple of {factor} (the U-Net halves it {self.halvings} times)", horizon
        )
        return horizon

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """sample (B, H, A) noisy normalised actions, timestep (B,) float diffusion step, cond
        (B, cond_dim) -> (B, H, A) the predicted noise (or clean actions, by the prediction type).
        A horizon `check_horizon` refuses fails in the skip connections' concatenation."""
        film = torch.cat((self.step_encoder(timestep), cond), dim=-1)
        x, skips = sample.transpose(1, 2), []
        for level, stage in enumerate(self.down):
            x = stage(x, film)
            skips.append(x)
            if level < self.halvings:
                x = self.downsample[level](x)
        x = self.mid(x, film)
        for stage, upsample, skip in zip(self.up, self.upsample, reversed(skips[1:])):
            x = upsample(stage(torch.cat((x, skip), dim=1), film))
        return self.final(x).transpose(1, 2)


# -- the observation encoder


class SpatialSoftmax(nn.Module):
    """(N, K, h, w) feature maps -> (N, 2K): the expected (x, y) in [-1, 1] of each map's softmax
    over its pixels, one keypoint per map (Levine et al. 2016)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack((xs.flatten(), ys.flatten()), dim=-1), persistent=False)  # (h*w, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = features.flatten(2).softmax(dim=-1)
        return (weights @ self.grid).flatten(1)


class ImageEncoder(nn.Module):
    """(N, C, S, S) images in [-1, 1] -> (N, feature_dim): a small CNN (`CONV_CHANNELS`,
    GroupNorm, Mish), spatial-softmax keypoints and a linear map."""

    def __init__(self, channels: int, size: int, feature_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        layer_sizes = zip((channels, *CONV_CHANNELS[:-1]), CONV_CHANNELS, CONV_KERNELS, CONV_STRIDES)
        for c_in, c_out, kernel, stride in layer_sizes:
            padding = (kernel - stride + 1) // 2  # 64 -> 16 for the 8 x 8 stride-4 layer, same size for 3 x 3 stride 1
            layers += [
                nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding),
                nn.GroupNorm(IMAGE_GROUPS, c_out),
                nn.Mish(),
            ]
            size = (size + 2 * padding - kernel) // stride + 1
        self.cnn = nn.Sequential(*layers, nn.Conv2d(CONV_CHANNELS[-1], KEYPOINTS, 1))
        self.keypoints = SpatialSoftmax(size, size)
        self.head = nn.Linear(2 * KEYPOINTS, feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.keypoints(self.cnn(images)))


class ObservationEncoder(nn.Module):
    """The last obs_horizon observations -> one conditioning vector (B, cond_dim).

    Each step's normalised state goes through an MLP to feature_dim features and, for image
    tasks, its image_channels images (e.g. the current frame and the goal image) through the
    `ImageEncoder` (shared over the steps) to feature_dim more; the steps' features are
    concatenated: cond_dim = obs_horizon x feature_dim x (2 with images, 1 without).
    image_channels 0 means a state-only task (image_size is then ignored).
    """

    def __init__(
        self,
        state_dim: int,
        image_channels: int,
        image_size: int,
        obs_horizon: int,
        feature_dim: int = 64,
        hidden: int = STATE_HIDDEN,
    ) -> None:
        super().__init__()
        state_dim, image_channels, image_size, obs_horizon, feature_dim = check_encoder(
            state_dim, image_channels, image_size, obs_horizon, feature_dim
        )
        hidden = require_int(hidden, "hidden", 1)
        self.state_dim, self.obs_horizon = state_dim, obs_horizon
        self.image_channels, self.image_size = image_channels, image_size
        self.state_mlp = nn.Sequential(nn.Linear(state_dim, hidden), nn.Mish(), nn.Linear(hidden, feature_dim))
        self.images = ImageEncoder(image_channels, image_size, feature_dim) if image_channels else None
        self.cond_dim = obs_horizon * feature_dim * (2 if image_channels else 1)

    def forward(self, state: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """state (B, To, state_dim) and images (B, To, C, S, S) (None for state-only), both
        normalised -> (B, cond_dim). Other shapes fail in the layers (`check` names them)."""
        features = self.state_mlp(state)
        if self.images is None:
            return features.flatten(1)
        image_features = self.images(images.flatten(0, 1)).unflatten(0, (-1, self.obs_horizon))
        return torch.cat((image_features, features), dim=-1).flatten(1)

    def check(self, state: torch.Tensor, images: torch.Tensor | None) -> None:
        """InputError naming `state` or `images` unless they have `forward`'s shapes (shapes only: no sync)."""
        steps, size = self.obs_horizon, self.image_size
        require(
            state.ndim == 3 and tuple(state.shape[1:]) == (steps, self.state_dim),
            "state",
            f"a tensor (B, {steps}, {self.state_dim})",
            tuple(state.shape),
        )
        if self.images is None:
            require(images is None, "images", "None for a state-only policy (image_channels 0)", type(images).__name__)
            return
        require(
            images is not None and tuple(images.shape) == (len(state), steps, self.image_channels, size, size),
            "images",
            f"a tensor ({len(state)}, {steps}, {self.image_channels}, {size}, {size}) (the state's batch)",
            None if images is None else tuple(images.shape),
        )


# -- the policy


def encode(
    normalizer: Normalizer, encoder: ObservationEncoder, state: torch.Tensor, images: torch.Tensor | None
) -> torch.Tensor:
    """Raw state (B, To, D) and images (B, To, C, S, S) in [0, 1] (or None) -> cond (B, cond_dim)."""
    normalized_images = None if images is None else normalizer.normalize_image(images)
    return encoder(normalizer.normalize_state(state), normalized_images)


class EncoderGraph(nn.Module):
    """The exportable observation graph of an image policy: (state_raw (B, To, D), images
    (B, To, C, S, S) in [0, 1]) -> cond (B, cond_dim), normalisation included."""

    def __init__(self, normalizer: Normalizer, encoder: ObservationEncoder) -> None:
        super().__init__()
        self.normalizer, self.encoder = normalizer, encoder

    def forward(self, state: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return encode(self.normalizer, self.encoder, state, images)


class StateEncoderGraph(EncoderGraph):
    """The exportable observation graph of a state-only policy: state_raw (B, To, D) -> cond (B, cond_dim)."""

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return encode(self.normalizer, self.encoder, state, None)


REQUIRED = ("obs_horizon", "horizon", "action_steps", "action_dim", "state_dim")
DEFAULTS = {
    "image_channels": 0,  # 0: a state-only task
    "image_size": 0,  # pixels per side; at least 1 with images
    "down_dims": (64, 128, 256),
    "kernel_size": 5,
    "n_groups": 8,
    "step_embed_dim": 64,
    "feature_dim": 64,
    "num_train_timesteps": 100,
    "num_inference_steps": 10,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}
KEYS = (*REQUIRED, *DEFAULTS)


def net_config(config: Mapping, other_keys: Collection[str] = ()) -> dict:
    """`config` (the agent settings) checked, with `DEFAULTS` for absent keys, as plain JSON-able
    values. InputError naming `agent.<key>` for a missing, bad or unknown key (keys in
    `other_keys`, the trainer's own, are allowed and left out)."""
    require(isinstance(config, Mapping), "agent", "a mapping of the diffusion policy settings", type(config).__name__)
    unknown = sorted(set(config) - set(KEYS) - set(other_keys))
    if unknown:
        raise InputError(f"agent keys {unknown} are unknown: expected keys among {sorted({*KEYS, *other_keys})}")
    for key in REQUIRED:
        require(key in config, f"agent.{key}", "a setting", "nothing")
    cfg = {**DEFAULTS, **{k: config[k] for k in KEYS if k in config}}
    state_dim, image_channels, image_size, obs_horizon, feature_dim = check_encoder(
        cfg["state_dim"], cfg["image_channels"], cfg["image_size"], cfg["obs_horizon"], cfg["feature_dim"], "agent"
    )
    down_dims, kernel_size, n_groups, step_embed_dim = check_unet(
        cfg["down_dims"], cfg["kernel_size"], cfg["n_groups"], cfg["step_embed_dim"], "agent"
    )
    horizon = require_int(cfg["horizon"], "agent.horizon", 1)
    action_steps = require_int(cfg["action_steps"], "agent.action_steps", 1)
    require(  # the executed actions start at the current step, obs_horizon - 1 into the chunk
        obs_horizon - 1 + action_steps <= horizon,
        "agent.action_steps",
        f"at most agent.horizon - agent.obs_horizon + 1 = {horizon - obs_horizon + 1}",
        action_steps,
    )
    return {
        "obs_horizon": obs_horizon,
        "horizon": horizon,
        "action_steps": action_steps,
        "action_dim": require_int(cfg["action_dim"], "agent.action_dim", 1),
        "state_dim": state_dim,
        "image_channels": image_channels,
        "image_size": image_size,
        "down_dims": list(down_dims),
        "kernel_size": kernel_size,
        "n_groups": n_groups,
        "step_embed_dim": step_embed_dim,
        "feature_dim": feature_dim,
        **check_settings({k: cfg[k] for k in SETTINGS}, "agent"),
    }


class DiffusionPolicyNet(nn.Module):
    """Encoder, U-Net and normaliser of a diffusion policy, with its training loss and DDIM sampler.

    config: the agent settings (`net_config`: keys `KEYS`, defaults `DEFAULTS`); `self.config`
    keeps them checked and complete, to rebuild the network from a checkpoint. The normaliser
    starts with identity statistics: set the dataset's with `self.normalizer.set_stats(...)`.
    Action chunks (B, horizon, action_dim) start at the first observed step (module docstring).
    """

    def __init__(self, config: Mapping, other_keys: Collection[str] = ()) -> None:
        super().__init__()
        self.config = cfg = net_config(config, other_keys)
        self.obs_horizon, self.horizon, self.action_steps = cfg["obs_horizon"], cfg["horizon"], cfg["action_steps"]
        self.action_dim, self.prediction_type = cfg["action_dim"], cfg["prediction_type"]
        self.normalizer = Normalizer(cfg["state_dim"], cfg["action_dim"])
        self.encoder = ObservationEncoder(
            cfg["state_dim"], cfg["image_channels"], cfg["image_size"], cfg["obs_horizon"], cfg["feature_dim"]
        )
        self.unet = ConditionalUnet1D(
            cfg["action_dim"],
            self.encoder.cond_dim,
            cfg["down_dims"],
            cfg["kernel_size"],
            cfg["n_groups"],
            cfg["step_embed_dim"],
        )
        self.unet.check_horizon(cfg["horizon"], "agent.horizon")
        noise_settings = {k: cfg[k] for k in ("num_train_timesteps", "beta_schedule", "clip_sample", "prediction_type")}
        self.noising = DDPMScheduler(**noise_settings)
        self.sampler = DDIMScheduler(
            **noise_settings, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
        )
        self.sampler.set_timesteps(cfg["num_inference_steps"])
        # Python ints for scheduler.step (a tensor timestep would be read back in its `if`), and
        # their float copies as the network's input, on the model's device
        self.timesteps = tuple(int(t) for t in self.sampler.timesteps.tolist())
        self.register_buffer("timestep_inputs", torch.tensor(self.timesteps, dtype=torch.float32), persistent=False)

    def encode(self, state: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """Raw state (B, To, D) and images (B, To, C, S, S) in [0, 1] (None for state-only) -> cond
        (B, cond_dim); InputError naming `state` or `images` for other shapes."""
        self.encoder.check(state, images)
        return encode(self.normalizer, self.encoder, state, images)

    def loss(self, state: torch.Tensor, images: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        """The denoising loss (scalar): MSE between the U-Net's output and the noise (or the clean
        chunk, for prediction_type "sample") added by DDPM at uniformly drawn steps.

        state (B, To, D) raw, images (B, To, C, S, S) in [0, 1] or None, actions (B, H, A) raw,
        chunk[:, k] being the action at step t - To + 1 + k for the observations' last step t.
        """
        self.check_chunk(actions, "actions")
        cond = self.encode(state, images)
        clean = self.normalizer.normalize_action(actions)
        noise = torch.randn_like(clean)
        steps = torch.randint(0, self.noising.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
        predicted = self.unet(self.noising.add_noise(clean, noise, steps), steps.to(clean.dtype), cond)
        return F.mse_loss(predicted, noise if self.prediction_type == "epsilon" else clean)

    def denoise(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The DDIM loop (eta 0) in normalised action space: noise (B, H, A) -> chunk (B, H, A)."""
        sample, batch = noise, noise.shape[0]
        for t, t_input in zip(self.timesteps, self.timestep_inputs):
            predicted = self.unet(sample, t_input.expand(batch), cond)
            sample = self.sampler.step(predicted, t, sample).prev_sample
        return sample

    @torch.no_grad()
    def sample(self, state: torch.Tensor, images: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Raw action chunks (B, H, A) for the observations (as in `loss`), deterministic given the
        initial `noise` (B, H, A) (standard normal in normalised action space)."""
        self.check_chunk(noise, "noise")
        return self.normalizer.unnormalize_action(self.denoise(self.encode(state, images), noise))

    @torch.no_grad()
    def act(
        self, state: torch.Tensor, images: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The actions to execute (B, action_steps, A) raw, from the current step (the last
        observed) on: a sampled chunk's entries obs_horizon - 1 .. obs_horizon - 2 + action_steps."""
        device = self.normalizer.action_center.device
        noise = torch.randn((state.shape[0], self.horizon, self.action_dim), generator=generator, device=device)
        first = self.obs_horizon - 1
        return self.sample(state, images, noise)[:, first : first + self.action_steps]

    def check_chunk(self, chunk: torch.Tensor, what: str) -> None:
        """InputError naming `what` unless `chunk` is (B, horizon, action_dim) (shapes only, no sync)."""
        expected = (self.horizon, self.action_dim)
        require(
            chunk.ndim == 3 and tuple(chunk.shape[1:]) == expected,
            what,
            f"a tensor (B, {expected[0]}, {expected[1]})",
            tuple(chunk.shape),
        )

    def encoder_graph(self) -> EncoderGraph:
        """The exportable observation graph (shares this network's modules): (state_raw (B, To, D),
        images (B, To, C, S, S)) -> cond (B, cond_dim), or state_raw alone for a state-only policy."""
        graph = EncoderGraph if self.encoder.images is not None else StateEncoderGraph
        return graph(self.normalizer, self.encoder)

    def denoiser_graph(self) -> ConditionalUnet1D:
        """The exportable denoiser: (sample (B, H, A), timestep (B,) float, cond (B, cond_dim)) -> (B, H, A)."""
        return self.unet
