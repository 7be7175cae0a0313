"""Benchmarks that print one JSON object (record results in BENCHMARKS.md).

    python scripts/benchmark.py render --probe linear --batch 100 --height 200 --width 150 --json
    python scripts/benchmark.py env --task <any registered task> --num-envs 256 --steps 200 --json

`render` times the B-mode renderer on the default phantom (1 mm) with probe poses spread over
the lumbar back, after a warm-up that includes compilation. `env` times whole environment steps
(actions, IK, contact, rendering, rewards, resets) of a task as conf/ composes it, under
uniformly random actions, after warm-up steps that include compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.anatomy.bank import PatientBank  # noqa: E402
from sim.anatomy.prepare import prepare_patient  # noqa: E402
from sim.anatomy.surface import skin_point  # noqa: E402
from sim.envs.base import check_device  # noqa: E402
from sim.errors import InputError, require_int, require_number  # noqa: E402
from sim.memory import keep_freed_memory  # noqa: E402
from sim.ultrasound.placement import probe_pose_on_skin  # noqa: E402
from sim.ultrasound.probe import ProbeSpec  # noqa: E402
from sim.ultrasound.renderer import Renderer, RendererConfig  # noqa: E402
from tasks import registry  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def machine() -> dict:
    return {
        "device_name": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }


def lumbar_poses(patient, n: int, seed: int) -> torch.Tensor:
    """n probe poses on the back over L1-L5: random position, yaw and a 2 mm press."""
    rng = np.random.default_rng(seed)
    centres = np.stack([lm.centre for lm in patient.landmarks.values()])
    x = rng.uniform(-0.03, 0.03, n) + centres[:, 0].mean()
    z = rng.uniform(centres[:, 2].min(), centres[:, 2].max(), n)
    point, normal = skin_point(patient.skin, x, z)
    yaw = rng.uniform(-np.pi, np.pi, n)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return probe_pose_on_skin(t(point), t(normal), t(yaw))


def bench_render(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    probe = ProbeSpec.preset(
        args.probe, image_height=args.height, image_width=args.width
    )  # checked before the phantom is made
    patient = prepare_patient({"source": "phantom", "seed": 0, "spacing_mm": args.spacing_mm}, progress=False)
    bank = PatientBank([patient], device=args.device)
    renderer = Renderer(bank, probe, config=RendererConfig(compile=not args.no_compile))
    poses = lumbar_poses(patient, args.batch, seed=0).to(args.device)
    idx = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    sync = torch.cuda.synchronize if bank.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    renderer.render(poses, idx)
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        renderer.render(poses, idx)
        sync()
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    return {
        "benchmark": "render",
        "probe": args.probe,
        "batch": args.batch,
        "height": args.height,
        "width": args.width,
        "lines": probe.n_lines,
        "samples": probe.n_samples,
        "images_per_s": round(args.batch / (ms / 1000), 1),
        "ms_per_batch": round(ms, 2),
        "warmup_s": round(warmup_s, 1),
        "compiled": not args.no_compile,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(bank.device),
        "threads": torch.get_num_threads(),
        **machine(),
    }


def bench_env(args: argparse.Namespace) -> dict:
    from policies.workflow import build_env, compose_config

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = compose_config(
        [
            f"task={args.task}",
            f"num_envs={args.num_envs}",
            f"device={args.device}",
            f"backend={args.backend}",
            *args.override,
        ]
    )
    env = build_env(cfg, "train")
    gen = torch.Generator(env.device).manual_seed(0)
    sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)

    obs = env.reset()
    forces, successes = [], []
    expert = registry.spec(args.task).expert(env) if args.policy == "expert" else None

    def act(obs) -> torch.Tensor:
        if expert is not None:
            return expert(obs)
        return 2 * torch.rand(env.num_envs, env.num_actions, generator=gen, device=env.device) - 1

    def run(steps: int, record: bool) -> tuple[float, int]:
        nonlocal obs
        episodes = 0
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            obs, _, terminated, truncated, extras = env.step(act(obs))
            episodes += int((terminated | truncated).sum())
            if record:
                snapshot = env.snapshot()
                forces.append(snapshot.tool_forces[snapshot.tool])
                successes.append(extras["log"].get("Episode/success", torch.zeros(0, device=env.device)))
        sync()
        return time.perf_counter() - t0, episodes

    warmup_s, _ = run(args.warmup, record=False)
    seconds, episodes = run(args.steps, record=True)
    force = torch.stack(forces).flatten().float().cpu()
    ended = torch.cat(successes).float().cpu()
    return {
        "benchmark": "env",
        "task": args.task,
        "backend": args.backend,
        "num_envs": args.num_envs,
        "steps": args.steps,
        "env_steps_per_s": round(args.num_envs * args.steps / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "episodes_ended": episodes,
        "policy": args.policy,
        # the primary tool's contact force over every environment step, N, and the ended episodes' success
        "contact_force_n": {
            "median": round(force.median().item(), 2),
            "p95": round(force.quantile(0.95).item(), 2),
            "max": round(force.max().item(), 2),
        },
        "success_rate": round(ended.mean().item(), 3) if len(ended) else None,
        "warmup_s": round(warmup_s, 1),
        "observation_shapes": {k: list(v.shape[1:]) for k, v in obs.items()},
        "patients": len(env.patients),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(env.device),
        "threads": torch.get_num_threads(),
        **machine(),
    }


class Parser(argparse.ArgumentParser):
    """Reports a bad command line as the other scripts report bad input: one line, exit status 2."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def check_args(args: argparse.Namespace) -> None:
    """InputError naming the first option out of range (the task, probe and overrides are checked where they
    are read)."""
    check_device(args.device)
    require_int(args.threads, "--threads", 0)
    counts = ("batch", "height", "width", "repeats") if args.what == "render" else ("num_envs", "steps")
    for name in counts:
        require_int(getattr(args, name), f"--{name.replace('_', '-')}", 1)
    if args.what == "render":
        require_number(args.spacing_mm, "--spacing-mm", 0.0, low_open=True)
    else:
        require_int(args.warmup, "--warmup", 0)


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as train.py does, so the figures measure the allocator training runs with (sim.memory)
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("render", help="B-mode renderer throughput")
    r.add_argument("--probe", default="linear", help="probe preset in conf/probe/")
    r.add_argument("--batch", type=int, default=100)
    r.add_argument("--height", type=int, default=200)
    r.add_argument("--width", type=int, default=150)
    r.add_argument("--repeats", type=int, default=10)
    r.add_argument("--spacing-mm", type=float, default=1.0, help="phantom voxel size")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--no-compile", action="store_true", help="run eagerly instead of torch.compile")
    r.add_argument("--json", action="store_true", help="print only the JSON result")
    e = sub.add_parser("env", help="environment steps per second, rendering included")
    e.add_argument(
        "--task",
        choices=registry.names(),
        default=registry.names()[0],
        help="a registered task (conf/task/<task>.yaml)",
    )
    e.add_argument("--backend", default="torch", help="backend config in conf/backend/")
    e.add_argument("--num-envs", type=int, default=256)
    e.add_argument("--steps", type=int, default=200, help="timed steps")
    e.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    e.add_argument(
        "--policy", choices=("random", "expert"), default="random", help="random actions, or the task's scripted expert"
    )
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    e.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. patient.common.spacing_mm=2")
    e.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)
    try:
        check_args(args)
        result = {"render": bench_render, "env": bench_env}[args.what](args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not args.json:
        print(f"{args.what}: {result}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
