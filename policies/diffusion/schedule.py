"""The DDIM sampler of the diffusion policy in plain numpy, for robot PCs without torch.

`ddim_schedule` computes what diffusers' `DDIMScheduler` holds after `set_timesteps` (betas as
diffusers computes them, "leading" timestep spacing, steps_offset 0, set_alpha_to_one) as plain
JSON-able numbers, so an export can write it to deploy.json; `check_schedule` validates one read
back; `ddim_step` and `ddim_sample` replay `DDIMScheduler.step` with eta 0 (deterministic) in
float32, so a runtime that evaluates the exported denoiser graph reproduces
`DiffusionPolicyNet.sample` (policies/diffusion/networks.py) to float32 rounding.

Only numpy and `sim.errors` are imported: no torch, no diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from sim.errors import InputError, require, require_bool, require_choice, require_int, require_number

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("epsilon", "sample")  # what the network predicts: the added noise or the clean actions
SETTINGS = ("num_train_timesteps", "num_inference_steps", "beta_schedule", "clip_sample", "prediction_type")
SCHEDULE_KEYS = (
    "timesteps",
    "alphas_cumprod",
    "final_alpha_cumprod",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "num_train_timesteps",
)
MAX_BETA = 0.999  # diffusers' cap on the cosine schedule's betas (betas_for_alpha_bar)
LINEAR_BETAS = (1e-4, 0.02)  # diffusers' default beta_start, beta_end for the "linear" schedule
CLIP_SAMPLE_RANGE = 1.0  # the normalised actions lie in [-1, 1] (policies/diffusion/normalizer.py)


def check_settings(settings: Mapping, what: str) -> dict:
    """The diffusion settings (keys `SETTINGS`) of `settings`, checked; `InputError` naming
    `what.<key>` for a missing or bad one."""
    for key in SETTINGS:
        require(key in settings, f"{what}.{key}", "a setting", "nothing")
    train_steps = require_int(settings["num_train_timesteps"], f"{what}.num_train_timesteps", 1)
    inference_steps = require_int(settings["num_inference_steps"], f"{what}.num_inference_steps", 1)
    require(
        inference_steps <= train_steps,
        f"{what}.num_inference_steps",
        f"at most {what}.num_train_timesteps = {train_steps}",
        inference_steps,
    )
    return {
        "num_train_timesteps": train_steps,
        "num_inference_steps": inference_steps,
        "beta_schedule": require_choice(settings["beta_schedule"], f"{what}.beta_schedule", BETA_SCHEDULES),
        "clip_sample": require_bool(settings["clip_sample"], f"{what}.clip_sample"),
        "prediction_type": require_choice(settings["prediction_type"], f"{what}.prediction_type", PREDICTION_TYPES),
    }


def betas(num_train_timesteps: int, beta_schedule: str) -> np.ndarray:
    """The noise variances beta_t, (num_train_timesteps,) float32, as diffusers' schedulers compute them
    (bit for bit for "squaredcos_cap_v2"; "linear" rounds float64 steps where torch.linspace steps in
    float32, so a beta may differ by one float32 rounding)."""
    if beta_schedule == "linear":
        return np.linspace(*LINEAR_BETAS, num_train_timesteps, dtype=np.float64).astype(np.float32)

    def alpha_bar(t: float) -> float:  # Nichol & Dhariwal's cosine schedule, in Python floats as diffusers has it
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = num_train_timesteps
    return np.array(
        [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), MAX_BETA) for i in range(steps)], dtype=np.float32
    )


def leading_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """diffusers' "leading" DDIM timesteps: multiples of num_train_timesteps // num_inference_steps,
    from the largest down to 0."""
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio for i in reversed(range(num_inference_steps))]


def ddim_schedule(
    num_train_timesteps: int, num_inference_steps: int, beta_schedule: str, clip_sample: bool, prediction_type: str
) -> dict:
    """The DDIM schedule as JSON-able numbers: {"timesteps": [int] (num_inference_steps, decreasing),
    "alphas_cumprod": [float] (num_train_timesteps; the float32 values of diffusers' tensor),
    "final_alpha_cumprod": 1.0, "clip_sample": bool, "clip_sample_range": 1.0, "prediction_type":
    str, "num_train_timesteps": int}. InputError naming `ddim_schedule.<argument>` for a bad one."""
    settings = check_settings(
        {
            "num_train_timesteps": num_train_timesteps,
            "num_inference_steps": num_inference_steps,
            "beta_schedule": beta_schedule,
            "clip_sample": clip_sample,
            "prediction_type": prediction_type,
        },
        "ddim_schedule",
    )
    alphas = np.float32(1) - betas(settings["num_train_timesteps"], settings["beta_schedule"])
    # torch.cumprod accumulates float32 in float64 on the CPU and rounds each product: do the same
    alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
    return {
        "timesteps": leading_timesteps(settings["num_train_timesteps"], settings["num_inference_steps"]),
        "alphas_cumprod": [float(a) for a in alphas_cumprod],
        "final_alpha_cumprod": 1.0,
        "clip_sample": settings["clip_sample"],
        "clip_sample_range": CLIP_SAMPLE_RANGE,
        "prediction_type": settings["prediction_type"],
        "num_train_timesteps": settings["num_train_timesteps"],
    }


def check_alphas(value: object, what: str, count: int) -> list[float]:
    """`value` as a list of `count` non-increasing numbers in (0, 1]; InputError naming `what` otherwise."""
    require(isinstance(value, list) and len(value) == count, what, f"a list of {count} numbers", type(value).__name__)
    alphas = [require_number(a, f"{what}[{i}]", 0.0, 1.0, low_open=True) for i, a in enumerate(value)]
    for i in range(1, count):
        require(alphas[i] <= alphas[i - 1], f"{what}[{i}]", f"at most {what}[{i - 1}] = {alphas[i - 1]}", alphas[i])
    return alphas


def check_timesteps(value: object, what: str, num_train_timesteps: int) -> list[int]:
    """`value` as DDIM timesteps: a non-empty list of ints in [0, num_train_timesteps), decreasing by
    num_train_timesteps // len(value) from one to the next (the step `ddim_step` assumes)."""
    require(
        isinstance(value, list) and 1 <= len(value) <= num_train_timesteps,
        what,
        f"a list of 1 to {num_train_timesteps} ints",
        value if not isinstance(value, list) else f"{len(value)} entries",
    )
    steps = [require_int(t, f"{what}[{i}]", 0) for i, t in enumerate(value)]
    require(steps[0] < num_train_timesteps, f"{what}[0]", f"less than {num_train_timesteps}", steps[0])
    ratio = num_train_timesteps // len(steps)
    for i in range(1, len(steps)):
        require(steps[i] == steps[i - 1] - ratio, f"{what}[{i}]", f"{what}[{i - 1}] - {ratio}", steps[i])
    return steps


def check_schedule(schedule: object, what: str) -> dict:
    """`schedule` (e.g. read from deploy.json) checked as a `ddim_schedule` result: InputError naming
    `what.<key>` for a missing, unknown or bad key. Returns it with plain Python values."""
    require(isinstance(schedule, Mapping), what, "a mapping of the DDIM schedule", type(schedule).__name__)
    unknown = sorted(set(schedule) - set(SCHEDULE_KEYS))
    if unknown:
        raise InputError(f"{what} keys {unknown} are unknown: expected the keys {list(SCHEDULE_KEYS)}")
    for key in SCHEDULE_KEYS:
        require(key in schedule, f"{what}.{key}", "a value", "nothing")
    train_steps = require_int(schedule["num_train_timesteps"], f"{what}.num_train_timesteps", 1)
    return {
        "timesteps": check_timesteps(schedule["timesteps"], f"{what}.timesteps", train_steps),
        "alphas_cumprod": check_alphas(schedule["alphas_cumprod"], f"{what}.alphas_cumprod", train_steps),
        "final_alpha_cumprod": require_number(
            schedule["final_alpha_cumprod"], f"{what}.final_alpha_cumprod", 0.0, 1.0, low_open=True
        ),
        "clip_sample": require_bool(schedule["clip_sample"], f"{what}.clip_sample"),
        "clip_sample_range": require_number(
            schedule["clip_sample_range"], f"{what}.clip_sample_range", 0.0, low_open=True
        ),
        "prediction_type": require_choice(schedule["prediction_type"], f"{what}.prediction_type", PREDICTION_TYPES),
        "num_train_timesteps": train_steps,
    }


def ddim_step(schedule: dict, eps: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
    """One deterministic (eta 0) DDIM update from timestep `t`, float32, as diffusers'
    `DDIMScheduler.step`: the clean sample x0 predicted from the network's output `eps` (the noise
    for "epsilon", x0 itself for "sample"), clipped to the clip range when clip_sample, then moved
    to the previous timestep t - num_train_timesteps // num_inference_steps (alpha 1 below 0).

    schedule: from `ddim_schedule` or `check_schedule`. eps, sample: same shape, e.g. (B, H, A)
    normalised actions. Returns the sample at the previous timestep, float32, that shape.
    """
    require(eps.shape == sample.shape, "eps", f"the sample's shape {sample.shape}", eps.shape)
    alphas = schedule["alphas_cumprod"]
    t = require_int(t, "t", 0)
    require(t < len(alphas), "t", f"a timestep below {len(alphas)}", t)
    prev_t = t - schedule["num_train_timesteps"] // len(schedule["timesteps"])
    alpha = np.float32(alphas[t])
    alpha_prev = np.float32(alphas[prev_t] if prev_t >= 0 else schedule["final_alpha_cumprod"])
    beta = np.float32(1) - alpha
    sample, eps = sample.astype(np.float32, copy=False), eps.astype(np.float32, copy=False)
    if schedule["prediction_type"] == "epsilon":
        x0, pred_eps = (sample - beta**0.5 * eps) / alpha**0.5, eps
    else:
        x0 = eps
        pred_eps = (sample - alpha**0.5 * x0) / beta**0.5
    if schedule["clip_sample"]:
        # diffusers clips x0 only: the direction term keeps the unclipped pred_eps (use_clipped_model_output False)
        limit = np.float32(schedule["clip_sample_range"])
        x0 = np.clip(x0, -limit, limit)
    return alpha_prev**0.5 * x0 + (np.float32(1) - alpha_prev) ** 0.5 * pred_eps


def ddim_sample(
    schedule: dict, denoise: Callable[[np.ndarray, np.ndarray], np.ndarray], noise: np.ndarray
) -> np.ndarray:
    """The DDIM loop: from `noise` (B, ...) float, one `ddim_step` per schedule timestep with
    eps = denoise(sample (B, ...) float32, timestep (B,) float32, the step index as a float).
    Returns the denoised sample (B, ...) float32 (normalised actions for the diffusion policy)."""
    require(isinstance(noise, np.ndarray) and noise.ndim >= 1, "noise", "an array (B, ...)", type(noise).__name__)
    sample = noise.astype(np.float32)
    for t in schedule["timesteps"]:
        timestep = np.full(len(sample), t, dtype=np.float32)
        sample = ddim_step(schedule, np.asarray(denoise(sample, timestep), dtype=np.float32), t, sample)
    return sample
