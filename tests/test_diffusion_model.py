"""The diffusion policy's networks, normaliser and DDIM sampler (policies/diffusion).

Small networks throughout, so every test runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from diffusers import DDIMScheduler

from policies.diffusion.networks import ConditionalUnet1D, DiffusionPolicyNet, ObservationEncoder
from policies.diffusion.normalizer import STATE_STD_FLOOR, Normalizer
from policies.diffusion.schedule import SETTINGS, check_schedule, ddim_sample, ddim_schedule, ddim_step
from policies.export import write_graphs
from sim.errors import InputError
from tests.host_sync import HostSyncGuard


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these small networks: on a busy CPU, idle threads spinning for work
    made the overfit test 7 times slower (the setting is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16, "feature_dim": 16, "kernel_size": 3}


def config(**overrides: object) -> dict:
    """A small image policy's settings (To 2, H 16, A 5, two 16 x 16 images per step), overridden."""
    base = {"obs_horizon": 2, "horizon": 16, "action_steps": 8, "action_dim": 5, "state_dim": 7}
    return {**base, "image_channels": 2, "image_size": 16, **SMALL, **overrides}


def observations(cfg: dict, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random raw state (B, To, D) and images (B, To, C, S, S) in [0, 1] (None for state-only) for `cfg`."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn((batch, cfg["obs_horizon"], cfg["state_dim"]), generator=gen)
    if not cfg["image_channels"]:
        return state, None
    size = cfg["image_size"]
    return state, torch.rand((batch, cfg["obs_horizon"], cfg["image_channels"], size, size), generator=gen)


# -- shapes


@pytest.mark.parametrize(
    "cfg",
    [config(), config(obs_horizon=1, horizon=8, action_steps=4, image_channels=0, image_size=0)],
    ids=["To2-H16-images", "To1-H8-state"],
)
def test_shapes(cfg):
    torch.manual_seed(0)
    net = DiffusionPolicyNet(cfg)
    state, images = observations(cfg, batch=3)
    cond = net.encode(state, images)
    per_step = cfg["feature_dim"] * (2 if cfg["image_channels"] else 1)
    assert cond.shape == (3, net.encoder.cond_dim) == (3, cfg["obs_horizon"] * per_step)
    chunk = torch.randn(3, cfg["horizon"], cfg["action_dim"])
    assert net.unet(chunk, torch.full((3,), 7.0), cond).shape == chunk.shape
    assert net.sample(state, images, chunk).shape == chunk.shape
    assert net.act(state, images).shape == (3, cfg["action_steps"], cfg["action_dim"])
    assert torch.isfinite(net.loss(state, images, chunk))


def test_unet_and_encoder_default_widths():
    encoder = ObservationEncoder(state_dim=7, image_channels=2, image_size=64, obs_horizon=2)
    state, images = torch.randn(2, 2, 7), torch.rand(2, 2, 2, 64, 64)
    assert encoder(state, images).shape == (2, encoder.cond_dim) == (2, 2 * 2 * 64)
    unet = ConditionalUnet1D(action_dim=5, cond_dim=encoder.cond_dim)
    assert unet(torch.randn(2, 16, 5), torch.tensor([0.0, 90.0]), encoder(state, images)).shape == (2, 16, 5)


def test_encoder_refuses_observations_of_the_wrong_shape():
    net = DiffusionPolicyNet(config())
    state, images = observations(config(), batch=2)
    with pytest.raises(InputError, match="images: expected a tensor"):
        net.encode(state, None)
    with pytest.raises(InputError, match=r"state: expected a tensor \(B, 2, 7\)"):
        net.encode(state[:, :1], images)
    with pytest.raises(InputError, match="noise: expected a tensor"):
        net.sample(state, images, torch.randn(2, 8, 5))
    state_only = DiffusionPolicyNet(config(image_channels=0, image_size=0))
    with pytest.raises(InputError, match="images: expected None for a state-only policy"):
        state_only.encode(state, images)


def test_a_horizon_the_unet_cannot_halve_is_refused():
    unet = ConditionalUnet1D(action_dim=5, cond_dim=8, down_dims=(16, 32, 64), n_groups=4)
    assert unet.check_horizon(12) == 12
    with pytest.raises(InputError, match=r"horizon: expected a multiple of 4 \(the U-Net halves it 2 times\), got 10"):
        unet.check_horizon(10)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        unet(torch.randn(1, 10, 5), torch.zeros(1), torch.zeros(1, 8))
    with pytest.raises(InputError, match="agent.horizon: expected a multiple of 2"):
        DiffusionPolicyNet(config(horizon=15))


# -- normaliser


def test_normalizer_round_trip_and_constant_features():
    gen = np.random.default_rng(0)
    low = gen.normal(size=4)
    high = low + np.array([2.0, 0.5, 0.0, 3.0])  # dimension 2 never moves
    std = np.array([1.5, 0.0, 0.2])  # feature 1 is constant
    norm = Normalizer.from_stats(np.array([1.0, -2.0, 0.5]), std, torch.from_numpy(low), high)
    actions = torch.from_numpy(gen.uniform(low, high, size=(6, 4))).float()
    scaled = norm.normalize_action(actions)
    assert scaled.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(norm.unnormalize_action(scaled), actions)
    ends = norm.normalize_action(torch.tensor(np.stack([low, high]), dtype=torch.float32))
    torch.testing.assert_close(ends[:, [0, 1, 3]], torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert (scaled[:, 2] == 0).all()
    # whatever the network outputs for the constant dimension, it unnormalises to the constant
    assert torch.allclose(norm.unnormalize_action(torch.randn(6, 4))[:, 2], torch.tensor(low[2], dtype=torch.float32))
    state = torch.tensor([[1.0, -2.0, 0.5], [2.5, -1.9, 0.7]])
    z = norm.normalize_state(state)
    torch.testing.assert_close(z, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.1 / STATE_STD_FLOOR, 1.0]]))
    torch.testing.assert_close(norm.normalize_image(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_normalizer_statistics_travel_in_the_state_dict():
    net = DiffusionPolicyNet(config())
    net.normalizer.set_stats(np.arange(7.0), np.full(7, 2.0), -np.ones(5), np.full(5, 3.0))
    restored = DiffusionPolicyNet(config())
    restored.load_state_dict(net.state_dict())
    for name, buffer in net.normalizer.named_buffers():
        torch.testing.assert_close(getattr(restored.normalizer, name), buffer)
    state, images = observations(config(), batch=2)
    noise = torch.randn(2, 16, 5)
    torch.testing.assert_close(restored.sample(state, images, noise), net.sample(state, images, noise))


@pytest.mark.parametrize(
    "stats, match",
    [
        ((np.zeros(3), np.ones(2), np.zeros(2), np.ones(2)), "state_std: expected a 1-D array of 3 numbers"),
        ((np.zeros((3, 1)), np.ones(3), np.zeros(2), np.ones(2)), "state_mean: expected a 1-D array"),
        ((np.array([0, np.nan, 0]), np.ones(3), np.zeros(2), np.ones(2)), "state_mean: expected finite numbers"),
        ((np.zeros(3), -np.ones(3), np.zeros(2), np.ones(2)), "state_std: expected standard deviations >= 0"),
        ((np.zeros(3), np.ones(3), np.zeros(2), np.array([1, np.inf])), "action_max: expected finite numbers"),
        ((np.zeros(3), np.ones(3), np.ones(2), np.zeros(2)), "action_max: expected at least action_min"),
        ((np.zeros(3), np.ones(3), "low", np.ones(2)), "action_min: expected a 1-D array of numbers"),
    ],
)
def test_normalizer_refuses_bad_statistics(stats, match):
    with pytest.raises(InputError, match=match):
        Normalizer.from_stats(*stats)


# -- the numpy schedule against diffusers


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("train_steps, inference_steps", [(100, 10), (100, 7), (1000, 16), (8, 8)])
def test_schedule_equals_diffusers(beta_schedule, train_steps, inference_steps):
    schedule = ddim_schedule(train_steps, inference_steps, beta_schedule, True, "epsilon")
    scheduler = DDIMScheduler(num_train_timesteps=train_steps, beta_schedule=beta_schedule, clip_sample=True)
    scheduler.set_timesteps(inference_steps)
    assert schedule["timesteps"] == scheduler.timesteps.tolist()
    np.testing.assert_allclose(schedule["alphas_cumprod"], scheduler.alphas_cumprod.numpy(), rtol=0, atol=1e-7)
    assert schedule["final_alpha_cumprod"] == float(scheduler.final_alpha_cumprod)
    assert schedule["clip_sample_range"] == scheduler.config.clip_sample_range
    assert check_schedule(json.loads(json.dumps(schedule, allow_nan=False)), "deploy.json.schedule") == schedule


def test_ddim_step_equals_diffusers():
    gen = np.random.default_rng(1)
    for prediction_type in ("epsilon", "sample"):
        for clip in (True, False):
            schedule = ddim_schedule(100, 10, "squaredcos_cap_v2", clip, prediction_type)
            scheduler = DDIMScheduler(
                num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=clip,
                prediction_type=prediction_type,
            )  # fmt: skip
            scheduler.set_timesteps(10)
            for t in schedule["timesteps"]:
                sample, eps = gen.normal(size=(2, 2, 8, 3)).astype(np.float32)
                expected = scheduler.step(torch.from_numpy(eps), t, torch.from_numpy(sample)).prev_sample.numpy()
                np.testing.assert_allclose(ddim_step(schedule, eps, t, sample), expected, rtol=0, atol=1e-6)


def schedule_with(**changes: object) -> dict:
    return {**ddim_schedule(20, 5, "squaredcos_cap_v2", True, "epsilon"), **changes}


@pytest.mark.parametrize(
    "schedule, match",
    [
        ([1, 2], "deploy.schedule: expected a mapping"),
        ({k: v for k, v in schedule_with().items() if k != "timesteps"}, "deploy.schedule.timesteps: expected a value"),
        (schedule_with(eta=0.0), r"deploy.schedule keys \['eta'\] are unknown"),
        (schedule_with(timesteps=[16, 8, 4, 0]), r"deploy.schedule.timesteps\[1\]: expected deploy.schedule.timesteps"),
        (schedule_with(timesteps=[20, 16, 12, 8, 4]), r"deploy.schedule.timesteps\[0\]: expected less than 20"),
        (schedule_with(timesteps=[4, 0, -4, -8, -12]), r"deploy.schedule.timesteps\[2\]: expected an int >= 0"),
        (schedule_with(timesteps=[16.0, 12, 8, 4, 0]), r"deploy.schedule.timesteps\[0\]: expected an int"),
        (schedule_with(timesteps=[]), "deploy.schedule.timesteps: expected a list of 1 to 20 ints"),
        (schedule_with(alphas_cumprod=[0.5] * 19), "deploy.schedule.alphas_cumprod: expected a list of 20 numbers"),
        (
            schedule_with(alphas_cumprod=[0.5] * 19 + [0.0]),
            r"alphas_cumprod\[19\]: expected a finite number in \(0, 1\]",
        ),
        (schedule_with(alphas_cumprod=[0.5] * 19 + [0.6]), r"alphas_cumprod\[19\]: expected at most"),
        (schedule_with(alphas_cumprod=[math.nan] * 20), r"alphas_cumprod\[0\]: expected a finite number"),
        (schedule_with(final_alpha_cumprod=1.5), "deploy.schedule.final_alpha_cumprod: expected a finite number"),
        (schedule_with(clip_sample="yes"), "deploy.schedule.clip_sample: expected true or false"),
        (schedule_with(clip_sample_range=0), "deploy.schedule.clip_sample_range: expected a finite number in"),
        (schedule_with(prediction_type="v_prediction"), "deploy.schedule.prediction_type: expected epsilon or sample"),
        (schedule_with(num_train_timesteps=0), "deploy.schedule.num_train_timesteps: expected an int >= 1"),
    ],
)
def test_check_schedule_refuses_bad_schedules(schedule, match):
    with pytest.raises(InputError, match=match):
        check_schedule(schedule, "deploy.schedule")


def numpy_denoiser(net: DiffusionPolicyNet, cond: torch.Tensor):
    """The torch U-Net as the numpy `denoise` callable of `ddim_sample`, for a fixed condition."""

    def denoise(sample: np.ndarray, timestep: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.unet(torch.from_numpy(sample), torch.from_numpy(timestep), cond).numpy()

    return denoise


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_numpy_ddim_loop_equals_the_torch_sampler(prediction_type):
    torch.manual_seed(0)
    cfg = config(prediction_type=prediction_type)
    net = DiffusionPolicyNet(cfg)  # a random network: its noise predictions drive x0 well past the clip range
    state, images = observations(cfg, batch=3)
    noise = torch.randn(3, 16, 5)
    with torch.no_grad():
        cond = net.encode(state, images)
        expected = net.denoise(cond, noise).numpy()
    schedule = ddim_schedule(**{key: net.config[key] for key in SETTINGS})  # what deploy.json would carry
    result = ddim_sample(schedule, numpy_denoiser(net, cond), noise.numpy())
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
    assert np.abs(expected).max() <= 1 + 1e-5  # the last step lands on the clipped x0


# -- ONNX


def run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The graph's output for `inputs` under onnxruntime (batch 3: the graphs were exported at batch 2)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: value.numpy() for name, value in inputs.items()})[0]


@pytest.mark.parametrize("image_channels", [2, 0], ids=["images", "state-only"])
def test_onnx_graphs_match_torch(tmp_path, image_channels):
    torch.manual_seed(0)
    cfg = config(image_channels=image_channels, image_size=16 if image_channels else 0)
    net = DiffusionPolicyNet(cfg).eval()
    net.normalizer.set_stats(np.linspace(-1, 1, 7), np.linspace(0.5, 2, 7), -2 * np.ones(5), np.arange(5.0))
    state, images = observations(cfg, batch=3)
    obs = {"state": state} if images is None else {"state": state, "images": images}
    encoder = net.encoder_graph()
    (tmp_path / "encoder").mkdir()
    write_graphs(encoder, list(obs), tuple(v[:2] for v in obs.values()), tmp_path / "encoder")
    with torch.no_grad():
        cond = encoder(*obs.values())
    np.testing.assert_allclose(run_onnx(tmp_path / "encoder" / "policy.onnx", obs), cond.numpy(), rtol=0, atol=1e-5)
    if image_channels == 0:
        return  # the denoiser graph does not depend on the observations
    denoiser_inputs = {"sample": torch.randn(3, 16, 5), "timestep": torch.tensor([90.0, 40.0, 0.0]), "cond": cond}
    denoiser = net.denoiser_graph()
    (tmp_path / "denoiser").mkdir()
    write_graphs(denoiser, list(denoiser_inputs), tuple(v[:2] for v in denoiser_inputs.values()), tmp_path / "denoiser")
    with torch.no_grad():
        eps = denoiser(*denoiser_inputs.values())
    onnx_eps = run_onnx(tmp_path / "denoiser" / "policy.onnx", denoiser_inputs)
    np.testing.assert_allclose(onnx_eps, eps.numpy(), rtol=0, atol=1e-5)


# -- behaviour


def test_act_returns_the_chunk_from_the_current_step():
    torch.manual_seed(0)
    cfg = config(obs_horizon=3, action_steps=6)
    net = DiffusionPolicyNet(cfg)
    state, images = observations(cfg, batch=2)
    actions = net.act(state, images, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((2, 16, 5), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(actions, net.sample(state, images, noise)[:, 2:8])


def test_loss_and_act_never_sync_with_the_device():
    net = DiffusionPolicyNet(config())
    state, images = observations(config(), batch=2)
    with HostSyncGuard():
        loss = net.loss(state, images, torch.randn(2, 16, 5))
        loss.backward()
        net.act(state, images)


def episode(steps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A recorded-like episode: the phase (steps, 1) in [0, 1] as the state and smooth 5-D
    sinusoidal actions (steps, 5) of one trajectory, amplitude 1 (raw units)."""
    phase = np.linspace(0, 1, steps)[:, None]
    actions = np.sin(2 * np.pi * phase * np.array([0.5, 0.75, 1.0, 1.25, 1.5]) + np.arange(5))
    return phase.astype(np.float32), actions.astype(np.float32)


def windows(values: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """values[start : start + length] for each start (B, length, ...), the episode's first and last
    entries repeated beyond its ends (diffusion_policy's padding)."""
    index = np.clip(starts[:, None] + np.arange(length), 0, len(values) - 1)
    return torch.from_numpy(values[index])


def test_overfits_a_single_episode():
    """A tiny net learns one episode's action chunks from their observations in 200 Adam steps.

    It predicts the clean chunk (prediction_type "sample"), which fits one demonstration within a
    few hundred steps; "epsilon" needs thousands (its path is checked step by step against diffusers).
    """
    torch.manual_seed(0)
    cfg = config(
        obs_horizon=2, horizon=16, action_steps=8, state_dim=1, image_channels=0, image_size=0, down_dims=[32, 64],
        n_groups=8, step_embed_dim=32, feature_dim=32, prediction_type="sample",
    )  # fmt: skip
    net = DiffusionPolicyNet(cfg)
    phase, actions = episode()
    net.normalizer.set_stats(phase.mean(0), phase.std(0), actions.min(0), actions.max(0))
    starts = np.arange(len(phase)) - (cfg["obs_horizon"] - 1)  # each step's window starts To - 1 before it
    state, chunks = windows(phase, starts, cfg["obs_horizon"]), windows(actions, starts, cfg["horizon"])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        net.loss(state, None, chunks).backward()
        optimizer.step()
    sampled = net.sample(state, None, torch.randn(chunks.shape, generator=torch.Generator().manual_seed(1)))
    assert (sampled - chunks).abs().mean() < 0.05  # raw units, against an amplitude of 1 (measured: 0.014)


# -- settings


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"obs_horizon": None}, "agent.obs_horizon: expected a setting"),
        ({"obs_horizon": 0}, "agent.obs_horizon: expected an int >= 1"),
        ({"horizon": 2.0}, "agent.horizon: expected an int"),
        ({"action_steps": 16}, "agent.action_steps: expected at most agent.horizon - agent.obs_horizon"),
        ({"action_dim": True}, "agent.action_dim: expected an int"),
        ({"state_dim": 0}, "agent.state_dim: expected an int >= 1"),
        ({"image_channels": -1}, "agent.image_channels: expected an int >= 0"),
        ({"image_size": 0}, "agent.image_size: expected an int >= 1"),
        ({"down_dims": []}, "agent.down_dims: expected a non-empty list"),
        ({"down_dims": [16, 30]}, r"agent.down_dims\[1\]: expected a multiple of agent.n_groups = 4"),
        ({"kernel_size": 4}, "agent.kernel_size: expected an odd int"),
        ({"n_groups": 0}, "agent.n_groups: expected an int >= 1"),
        ({"step_embed_dim": 6.5}, "agent.step_embed_dim: expected an int >= 4"),
        ({"step_embed_dim": 5}, "agent.step_embed_dim: expected an even int"),
        ({"feature_dim": 0}, "agent.feature_dim: expected an int >= 1"),
        ({"num_train_timesteps": 0}, "agent.num_train_timesteps: expected an int >= 1"),
        ({"num_inference_steps": 101}, "agent.num_inference_steps: expected at most agent.num_train_timesteps"),
        ({"beta_schedule": "cosine"}, "agent.beta_schedule: expected squaredcos_cap_v2 or linear"),
        ({"prediction_type": "v_prediction"}, "agent.prediction_type: expected epsilon or sample"),
        ({"clip_sample": 1}, "agent.clip_sample: expected true or false"),
        ({"down_dim": [16]}, r"agent keys \['down_dim'\] are unknown"),
    ],
)
def test_bad_settings_name_their_key(changes, match):
    cfg = {k: v for k, v in {**config(), **changes}.items() if v is not None}
    with pytest.raises(InputError, match=match):
        DiffusionPolicyNet(cfg)


def test_settings_defaults_and_trainer_keys():
    net = DiffusionPolicyNet(
        {"obs_horizon": 2, "horizon": 16, "action_steps": 8, "action_dim": 5, "state_dim": 3, "lr": 1e-4}, {"lr"}
    )
    assert net.config["down_dims"] == [64, 128, 256] and net.config["num_inference_steps"] == 10
    assert net.config["image_channels"] == 0 and "lr" not in net.config
    assert json.loads(json.dumps(net.config)) == net.config
    assert net.timesteps == (90, 80, 70, 60, 50, 40, 30, 20, 10, 0)
