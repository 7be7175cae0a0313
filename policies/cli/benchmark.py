"""Benchmarks that print one JSON object (record results in BENCHMARKS.md).

    sonolab-benchmark render --probe linear --batch 100 --height 200 --width 150 --json
    sonolab-benchmark env --task <any registered task> --num-envs 256 --steps 200 --json

    sonolab-benchmark train --task us_nav_state --nproc 2 --num-envs 256 --iterations 10 --json
    sonolab-benchmark realism --json
    sonolab-benchmark record --task us_nav --num-envs 256 --episodes 256 --json
    sonolab-benchmark diffusion --task us_nav --dataset <recorded folder> --epochs 2 --json
    sonolab-benchmark transfer --task us_nav --num-envs 192 --steps 80 --updates 2000 --json

`render` times the B-mode renderer on the default phantom (1 mm) with probe poses spread over
the lumbar back, after a warm-up that includes compilation. `env` times whole environment steps
(actions, IK, contact, rendering, rewards, resets) of a task as conf/ composes it, under
uniformly random actions, after warm-up steps that include compilation. `train` runs
scripts/train.py for --iterations (torchrun for --nproc > 1; --num-envs per process) into a
temporary folder, times the iterations after --warmup from its TensorBoard log and reports the
environment steps per second over all processes with what each process communicates per
iteration: the model's parameters x 4 bytes per gradient all-reduce, the normaliser statistics,
the episode statistics, and the environment state gathered for a checkpoint. `realism` compares a
real 5 MHz convex B-mode image (pydicom-data) with the default phantom rendered by the probe preset
matched to it (`convex_reference`), by sim.ultrasound.realism's statistics, against issue 17's targets.
`record` records --episodes expert demonstrations (scripts/record.py) into a temporary folder and
reports episodes per minute (environment construction excluded) and the dataset's size per 1,000
steps. `diffusion` trains learner=diffusion (the task's agent settings) on --dataset for --epochs,
timing each epoch, then the latency of one action chunk (batch 1) of the PyTorch sampler and of
the robot runtime's loop over the exported ONNX graphs. `transfer` fits the task's actor network
(the learner's, untrained) to the scripted expert's actions on --steps steps of --num-envs
environments on the training patients and scores R^2 per action dimension there and on as many
steps on the held-out patients (policies/transfer_probe.py): whether the network can read the
action from its inputs on anatomy it has not seen, in minutes instead of an RL run.

The `sonolab-benchmark` command (installed sonolab, any folder) and scripts/benchmark.py run `main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sim.anatomy.bank import PatientBank
from sim.anatomy.prepare import prepare_patient
from sim.anatomy.surface import skin_point
from sim.envs.base import check_device
from sim.errors import InputError, require_int, require_number
from sim.memory import keep_freed_memory
from sim.transforms import pose_to_matrix
from sim.ultrasound.placement import probe_pose_on_skin
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from sim.ultrasound.tools import ToolSegments
from tasks import registry


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


def drill_across_planes(poses: torch.Tensor) -> ToolSegments:
    """A 3 mm drill per probe pose (N, 7), crossing its image plane obliquely 20-40 mm deep (probe
    frame: from (-20, -10, 20) mm to (20, 10, 40) mm), so every image shows it with its shadow."""
    m = pose_to_matrix(poses)  # (N, 3, 4) probe -> patient
    ends = torch.tensor([[-0.02, -0.01, 0.02], [0.02, 0.01, 0.04]], device=poses.device, dtype=poses.dtype)
    start, end = (m[:, :, :3] @ e + m[:, :, 3] for e in ends)
    return ToolSegments(start, end, 0.0015)


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
    tools = drill_across_planes(poses) if args.tool else None
    sync = torch.cuda.synchronize if bank.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    renderer.render(poses, idx, tools=tools)
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        renderer.render(poses, idx, tools=tools)
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
        "tool": args.tool,
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
    forces, logs = [], []
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
                if extras["log"]:
                    logs.append(extras["log"])
        sync()
        return time.perf_counter() - t0, episodes

    warmup_s, _ = run(args.warmup, record=False)
    seconds, episodes = run(args.steps, record=True)
    force = torch.stack(forces).flatten().float().cpu()
    task = registry.spec(args.task)
    # The task's own metrics (its `summary`, as play.py reports them) over every episode that ended.
    episodes_log = {
        k.removeprefix("Episode/"): torch.cat([log[k] for log in logs]).float().cpu()
        for k in (logs[0] if logs else {})
        if k.startswith(("Episode/", "Cost/"))
    }
    metrics = task.summary(episodes_log, env.dt) if logs else {}
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
        # the primary tool's contact force over every environment step, N; then the task's metrics of
        # the episodes that ended (success_rate None when none did)
        "contact_force_n": {
            "median": round(force.median().item(), 2),
            "p95": round(force.quantile(0.95).item(), 2),
            "max": round(force.max().item(), 2),
        },
        "success_rate": None,
        **metrics,
        "warmup_s": round(warmup_s, 1),
        "observation_shapes": {k: list(v.shape[1:]) for k, v in obs.items()},
        "patients": len(env.patients),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(env.device),
        "threads": torch.get_num_threads(),
        **machine(),
    }


def training_settings(args: argparse.Namespace, log_root: str) -> list[str]:
    """train.py's settings for --iterations of --task with --num-envs environments per process
    (all but the device), checkpoints only at the first and last iteration."""
    return [
        f"task={args.task}",
        f"num_envs={args.num_envs}",
        f"agent.max_iterations={args.iterations}",
        f"agent.save_interval={args.iterations}",
        f"log_root={log_root}",
        *args.override,
    ]


def launcher(nproc: int) -> list[str]:
    """The command that starts train.py: torchrun (one node, a free port) for more than one process."""
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def tensor_bytes(obj: object) -> int:
    """Bytes of the tensors in obj's dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def communication(cfg) -> dict:
    """What each process contributes to collectives per iteration under torchrun, from the model
    this training builds (built here on the CPU): rsl-rl's PPO all-reduces every parameter's
    gradient (float32) once per mini-batch update in buckets of grad_reduce_bucket_mb, and with the
    adaptive schedule the KL mean and the learning rate (4 bytes each) per update; each observation
    normaliser all-reduces its count (8 bytes), mean and variance once per iteration."""
    from rsl_rl.modules import EmpiricalNormalization

    from policies.runner import Runner
    from policies.workflow import build_env, train_config

    runner = Runner(build_env(cfg, "train"), train_config(cfg), None, "cpu")
    alg = runner.alg
    parameters = sum(p.numel() for group in alg.optimizer.param_groups for p in group["params"])
    updates = alg.num_learning_epochs * alg.num_mini_batches
    adaptive = alg.schedule == "adaptive" and alg.desired_kl is not None
    buckets = math.ceil(4 * parameters / (alg.grad_reduce_bucket_mb * 1024 * 1024))
    normalisers = [
        m for model in (alg.actor, alg.critic) for m in model.modules() if isinstance(m, EmpiricalNormalization)
    ]
    return {
        "parameters": parameters,
        "updates_per_iteration": updates,
        "grad_allreduce_bytes_per_iteration": 4 * parameters * updates,
        "other_allreduce_bytes_per_iteration": 8 * updates * adaptive
        + sum(8 + 8 * m.mean.numel() for m in normalisers),
        "collectives_per_iteration": updates * (buckets + 2 * adaptive) + 3 * len(normalisers) + 1,
    }


def bench_train(args: argparse.Namespace) -> dict:
    """Train --task for --iterations with --nproc processes of --num-envs environments each and time
    the iterations after --warmup: the wall-clock between two iterations' logs (rollout, update,
    statistics and checkpoint gathers), env steps per second over all processes, and `communication`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from policies import checkpoints
    from policies.workflow import compose_config

    with tempfile.TemporaryDirectory(prefix="sonolab-bench-train-") as log_root:
        settings = training_settings(args, log_root)
        cfg = compose_config([*settings, "device=cpu"])  # checked here first; the model is counted on the CPU
        command = [*launcher(args.nproc), "-m", "policies.cli.train", *settings, f"device={args.device}"]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall_s = time.perf_counter() - t0
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
            if errors:  # the training refused its settings: report it as this script's bad input
                raise InputError(errors[0].removeprefix("error: "))
            raise RuntimeError(f"training failed (exit {done.returncode}): {done.stderr[-3000:]}")
        run_dir = Path(done.stdout.strip().splitlines()[-1])
        log = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        log.Reload()
        # One Perf/total_fps event per iteration, written by its log: the wall-clock between two is the
        # whole iteration (rollout, update, the statistics' gather, a checkpoint where one is due).
        logged = [event.wall_time for event in log.Scalars("Perf/total_fps")]
        periods = [b - a for a, b in zip(logged, logged[1:])][args.warmup :]
        timed = slice(args.warmup + 1, None)  # the iterations those periods end with
        collection = [event.value for event in log.Scalars("Perf/collection_time")][timed]
        learning = [event.value for event in log.Scalars("Perf/learning_time")][timed]
        tags = log.Tags()["scalars"]
        episode_values = [tag for tag in tags if tag.split("/")[0] in ("Episode", "Reward", "Cost")]
        # rsl-rl logs the mean length once an episode has ended
        length = log.Scalars("Train/mean_episode_length")[-1].value if "Train/mean_episode_length" in tags else None
        final = checkpoints.load_checkpoint(checkpoints.latest_checkpoint(run_dir))
    iteration_s = statistics.median(periods)
    samples = args.nproc * args.num_envs * int(cfg.agent.num_steps_per_env)
    episodes = samples / length if length else 0.0  # ended per iteration, all processes
    comm = communication(cfg)
    # each ended episode: one float32 per logged value, and its return and length (pickled floats, ~9 bytes)
    statistics_bytes = round(episodes / args.nproc * (4 * len(episode_values) + 18))
    return {
        "benchmark": "train",
        "task": args.task,
        "nproc": args.nproc,
        "num_envs_per_process": args.num_envs,
        "steps_per_env": int(cfg.agent.num_steps_per_env),
        "iterations": args.iterations,
        "timed_iterations": len(periods),
        "env_steps_per_s": round(samples / iteration_s, 1),
        "iteration_s": round(iteration_s, 4),
        "collection_s": round(statistics.median(collection), 4),
        "learning_s": round(statistics.median(learning), 4),
        **comm,
        "statistics_bytes_per_iteration_estimate": statistics_bytes,
        "bytes_per_iteration": comm["grad_allreduce_bytes_per_iteration"]
        + comm["other_allreduce_bytes_per_iteration"]
        + statistics_bytes,
        "checkpoint_gather_bytes_per_process": tensor_bytes(final["env_state"]),
        "wall_s": round(wall_s, 1),
        "device": args.device,
        # torchrun gives each of several processes one thread unless OMP_NUM_THREADS says otherwise
        "threads_per_process": args.threads
        or int(os.environ.get("OMP_NUM_THREADS", 0))
        or (1 if args.nproc > 1 else torch.get_num_threads()),
        **machine(),
    }


def bench_record(args: argparse.Namespace) -> dict:
    from policies.cli.record import record_demos
    from policies.workflow import compose_config

    torch.set_num_threads(args.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demos"
        overrides = [f"task={args.task}", f"num_envs={args.num_envs}", f"episodes={args.episodes}", *args.override]
        cfg = compose_config([*overrides, f"dataset={folder}", f"device={args.device}"])
        _, summary = record_demos(cfg, overrides)
        seconds = summary["seconds"]  # the recording itself: environment construction excluded
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        from policies.demos.lerobot import read_dataset

        frames = read_dataset(folder, features=[]).info["total_frames"]
    return {
        "benchmark": "record",
        "task": args.task,
        "num_envs": args.num_envs,
        "episodes": summary["kept"],
        "episodes_per_min": round(60 * summary["kept"] / seconds, 1),
        "recorded_steps": frames,
        "env_steps": summary["steps"] * args.num_envs,
        "seconds": round(seconds, 1),
        "mb_per_1000_steps": round(size / 1e6 / frames * 1000, 3),
        "expert_success_rate": round(summary["success_rate"], 4),
        "device": args.device,
        "threads": torch.get_num_threads(),
        **machine(),
    }


def bench_diffusion(args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    from policies.demos.frames import STATE
    from policies.demos.lerobot import read_dataset
    from policies.deploy.diffusion import DiffusionGraphPolicy
    from policies.diffusion.data import ACTION, demonstrations
    from policies.diffusion.export import policy_part, write_diffusion_graphs
    from policies.diffusion.networks import DiffusionPolicyNet
    from policies.diffusion.policy import DiffusionController
    from policies.diffusion.trainer import Trainer
    from policies.learners.diffusion import DiffusionLearner, check_dataset, network_settings
    from policies.workflow import build_env, compose_config

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = compose_config([f"task={args.task}", "learner=diffusion", f"dataset={args.dataset}", *args.override])
    env = build_env(cfg, "train", num_envs=1)
    learner = DiffusionLearner()
    layout = learner.layout(cfg, env)
    check_dataset(read_dataset(args.dataset, features=[]), env, layout)
    dataset = read_dataset(args.dataset, features=[STATE, ACTION, *layout.image_names])
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    net = DiffusionPolicyNet(network_settings(agent, layout, env.num_actions))
    demos = demonstrations(dataset, layout, net.obs_horizon, net.horizon)
    trainer = Trainer(net, demos, cfg.agent, "cpu", {"seed": 0, "agent": agent})
    epochs = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        trainer.run_epoch()
        epochs.append(time.perf_counter() - start)
    net.eval()
    state, images, _ = demos.batch(torch.zeros(1, dtype=torch.long), "cpu")

    def latency(act) -> float:
        act()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            act()
            times.append(time.perf_counter() - start)
        return round(1000 * statistics.median(times), 2)

    torch_ms = latency(lambda: net.act(state, images))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        two = demos.batch(torch.arange(2), "cpu")  # traced at batch 2: a batch of 1 would be specialised
        write_diffusion_graphs(net, two[:1] if images is None else two[:2], folder)
        example = (state,) if images is None else (state, images)
        part = policy_part(DiffusionController(net, layout, env, 0))
        runtime = DiffusionGraphPolicy(folder, "onnx", {"policy": part})
        arrays = [t.numpy() for t in example]
        noise = np.random.default_rng(0).standard_normal((1, net.horizon, net.action_dim)).astype(np.float32)
        onnx_ms = latency(lambda: runtime.plan(arrays[0], arrays[1] if len(arrays) > 1 else None, noise))
    return {
        "benchmark": "diffusion",
        "task": args.task,
        "training_frames": len(demos),
        "batch_size": trainer.batch_size,
        "epoch_s": [round(s, 2) for s in epochs],
        "parameters": sum(p.numel() for p in net.parameters()),
        "num_inference_steps": len(net.timesteps),
        "chunk_latency_ms": {"torch": torch_ms, "onnx_runtime": onnx_ms},
        "action_steps": net.action_steps,
        "threads": torch.get_num_threads(),
        **machine(),
    }


def bench_transfer(args: argparse.Namespace) -> dict:
    from policies.transfer_probe import transfer_probe
    from policies.workflow import compose_config

    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg = compose_config([f"task={args.task}", f"num_envs={args.num_envs}", f"device={args.device}", *args.override])
    result = transfer_probe(cfg, args.steps, args.updates, args.batch, args.lr, args.noise, args.every)
    return {
        "benchmark": "transfer",
        "task": args.task,
        "learner": cfg.learner,
        "network": cfg.agent.get("actor", cfg.agent.get("student"))["class_name"],
        "overrides": args.override,
        "num_envs": args.num_envs,
        "steps": args.steps,
        "updates": args.updates,
        "batch": args.batch,
        **result,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": args.device,
        "threads": torch.get_num_threads(),
        **machine(),
    }


def realism_targets(real: dict, sim: dict) -> dict:
    """Issue 17's targets: grains within 25 % of the real image's both ways, lateral 2-3 x axial,
    the soft-tissue depth profile within 15 % of its mean from 3 to 12 cm, local contrast within 25 %."""
    ratio = lambda key: sim[key] / real[key]  # noqa: E731
    profile = [m for d, m in sim["depth_profile"].items() if 3 <= float(d) <= 12]
    flat = bool(profile) and all(abs(m / float(np.mean(profile)) - 1) <= 0.15 for m in profile)
    return {
        "axial_grain_within_25pct": bool(abs(ratio("axial_grain_mm") - 1) <= 0.25),
        "lateral_grain_within_25pct": bool(abs(ratio("lateral_grain_mm") - 1) <= 0.25),
        "lateral_2_to_3x_axial": bool(2 <= sim["lateral_over_axial"] <= 3),
        "depth_flat_3_12cm_within_15pct": flat,
        "local_contrast_within_25pct": bool(abs(ratio("local_contrast") - 1) <= 0.25),
    }


def bench_realism(args: argparse.Namespace) -> dict:
    """The real reference image against the default phantom (1 mm) imaged as the reference was
    (sim.ultrasound.reference_view: the `convex_reference` preset, the reference's display, the
    flank); both measured by sim.ultrasound.realism.measure over the central half of their sector."""
    from sim.ultrasound import realism, reference_view

    ref = realism.load_reference()  # first: InputError naming pip install pydicom-data when it is missing
    real = realism.measure(ref.gray, ref.pixel_mm, realism.central_roi(ref.valid), ref.valid, ref.depth0_row)
    patient = prepare_patient({"source": "phantom", "seed": 0, "spacing_mm": 1.0}, progress=False)
    view = reference_view.render_reference_view(patient)
    sim = realism.measure(view.image, view.pixel_mm, realism.central_roi(view.valid), view.valid, view.depth0_row)
    real_d, sim_d = real.to_dict(), sim.to_dict()
    keys = ("axial_grain_mm", "lateral_grain_mm", "lateral_over_axial", "local_contrast", "soft_tissue_mean")
    return {
        "benchmark": "realism",
        "reference": f"pydicom-data {realism.REFERENCE_FILE}",
        "probe": {"preset": reference_view.PRESET, **{k: v for k, v in view.probe.to_dict().items() if k != "kind"}},
        "display": reference_view.DISPLAY,
        "pixel_mm": {"real": round(ref.pixel_mm, 4), "simulated": round(view.pixel_mm, 4)},
        "real": real_d,
        "simulated": sim_d,
        "ratio_simulated_over_real": {k: round(sim_d[k] / real_d[k], 3) for k in keys},
        "targets_met": realism_targets(real_d, sim_d),
    }


class Parser(argparse.ArgumentParser):
    """Reports a bad command line as the other scripts report bad input: one line, exit status 2."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def check_args(args: argparse.Namespace) -> None:
    """InputError naming the first option out of range (the task, probe and overrides are checked where they
    are read)."""
    if args.what == "realism":
        return
    if args.what in ("record", "diffusion"):
        require_int(args.threads, "--threads", 0)
        for name in {"record": ("num_envs", "episodes"), "diffusion": ("epochs", "repeats")}[args.what]:
            require_int(getattr(args, name), f"--{name.replace('_', '-')}", 1)
        return
    check_device(args.device)
    require_int(args.threads, "--threads", 0)
    if args.what == "transfer":
        for name in ("num_envs", "steps", "updates", "batch", "every"):
            require_int(getattr(args, name), f"--{name.replace('_', '-')}", 1)
        require_number(args.lr, "--lr", 0.0, low_open=True)
        require_number(args.noise, "--noise", 0.0)
        return
    counts = {
        "render": ("batch", "height", "width", "repeats"),
        "env": ("num_envs", "steps"),
        "train": ("nproc", "num_envs"),
    }
    for name in counts[args.what]:
        require_int(getattr(args, name), f"--{name.replace('_', '-')}", 1)
    if args.what == "render":
        require_number(args.spacing_mm, "--spacing-mm", 0.0, low_open=True)
    else:
        require_int(args.warmup, "--warmup", 0)
    if args.what == "train":  # one timed period needs two iterations after the warm-up ones
        require_int(args.iterations, "--iterations (--warmup + 2 at least)", args.warmup + 2)


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as train.py does, so the figures measure the allocator training runs with (sim.memory)
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    # Options every benchmark takes (--json), and those of the ones that run a task (--task).
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print only the JSON result")
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument(
        "--task",
        choices=registry.names(),
        default=registry.names()[0],
        help="a registered task (conf/task/<task>.yaml)",
    )
    r = sub.add_parser("render", parents=[output], help="B-mode renderer throughput")
    r.add_argument("--probe", default="linear", help="probe preset in conf/probe/")
    r.add_argument("--batch", type=int, default=100)
    r.add_argument("--height", type=int, default=200)
    r.add_argument("--width", type=int, default=150)
    r.add_argument("--repeats", type=int, default=10)
    r.add_argument("--spacing-mm", type=float, default=1.0, help="phantom voxel size")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--no-compile", action="store_true", help="run eagerly instead of torch.compile")
    r.add_argument("--tool", action="store_true", help="a drill crossing every image plane (its echo and shadow)")
    e = sub.add_parser("env", parents=[task, output], help="environment steps per second, rendering included")
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
    t = sub.add_parser(
        "train", parents=[task, output], help="training throughput of one or several processes (torchrun)"
    )
    t.add_argument("--nproc", type=int, default=1, help="processes (torchrun --nproc_per_node for more than one)")
    t.add_argument("--num-envs", type=int, default=256, help="environments per process")
    t.add_argument("--iterations", type=int, default=10, help="training iterations (agent.max_iterations)")
    t.add_argument(
        "--warmup", type=int, default=1, help="iterations not timed first (compilation, the first checkpoint)"
    )
    t.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (cuda:LOCAL_RANK each)"
    )
    t.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per process (0: torch's; torchrun sets 1)")
    t.add_argument(
        "--override", nargs="*", default=[], help="more Hydra overrides for train.py, e.g. agent.num_steps_per_env=8"
    )
    sub.add_parser(
        "realism", parents=[output], help="speckle, contrast and depth profile against a real image (pydicom-data)"
    )
    rec = sub.add_parser("record", parents=[task, output], help="demonstration recording speed and size")
    rec.add_argument("--num-envs", type=int, default=256)
    rec.add_argument("--episodes", type=int, default=256, help="episodes to keep")
    rec.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    rec.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    rec.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. keep=all")
    d = sub.add_parser("diffusion", parents=[task, output], help="diffusion policy training epochs and chunk latency")
    d.add_argument("--dataset", required=True, help="a recorded dataset of the task (scripts/record.py)")
    d.add_argument("--epochs", type=int, default=2)
    d.add_argument("--repeats", type=int, default=20, help="timed action chunks")
    d.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    d.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. agent.batch_size=128")
    tr = sub.add_parser(
        "transfer", parents=[task, output], help="R^2 of the actor network fitted to the expert, train vs held out"
    )
    tr.add_argument("--num-envs", type=int, default=192, help="environments (episodes at once) per split")
    tr.add_argument("--steps", type=int, default=80, help="control steps recorded per split")
    tr.add_argument("--updates", type=int, default=2000, help="Adam steps of the fit")
    tr.add_argument("--batch", type=int, default=256)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--noise", type=float, default=0.3, help="std of the exploration added to the expert's actions")
    tr.add_argument("--every", type=int, default=200, help="updates between scores")
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    tr.add_argument("--override", nargs="*", default=[], help="more Hydra overrides, e.g. learner=distill")
    args = parser.parse_args(argv)
    try:
        check_args(args)
        benchmarks = {
            "render": bench_render,
            "env": bench_env,
            "train": bench_train,
            "realism": bench_realism,
            "record": bench_record,
            "diffusion": bench_diffusion,
            "transfer": bench_transfer,
        }
        result = benchmarks[args.what](args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not args.json:
        print(f"{args.what}: {result}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
