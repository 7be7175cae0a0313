"""Several processes, one training (torchrun, gloo on CPU): one policy, rank 0's files, statistics of
every process, exact resume, clear errors, and how 2 x 16 environments differ from 1 x 32."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from policies import checkpoints, distributed
from policies.distributed import Process
from policies.runner import Runner, concatenated, set_rng_state
from policies.workflow import build_env, compose_config, run_config, train_config
from scripts.train import train
from sim.errors import InputError
from tests.tasks_helpers import ROOT, SMALL_RUN

SCRIPT = str(ROOT / "scripts" / "train.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# 8-step episodes: each of a rank's 16 environments ends about one episode per 8-step iteration.
RUN = [
    "task=us_nav_state",
    "num_envs=16",
    "agent.num_steps_per_env=8",
    "agent.save_interval=1",
    "task.episode_steps=8",
    *SMALL_RUN,
]
ITERATIONS = 8
MODELS = ("actor_state_dict", "critic_state_dict")


def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def final(run_dir: Path) -> dict:
    return checkpoints.load_checkpoint(checkpoints.latest_checkpoint(run_dir))


def rank_part(data: dict, rank: int) -> dict:
    """Rank `rank`'s environment state and generators in a checkpoint."""
    return data if rank == 0 else data["other_ranks"][rank - 1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(run folder, torchrun's output) of an 8-iteration training of 2 processes x 16 environments."""
    root = tmp_path_factory.mktemp("two_ranks")
    out = run([*TORCHRUN, SCRIPT, *RUN, f"agent.max_iterations={ITERATIONS}", f"log_root={root}"])
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1]), out


def test_two_processes_train_one_policy_and_only_rank_0_writes(two_ranks):
    run_dir, out = two_ranks
    for name in ("model_0.pt", f"model_{ITERATIONS - 1}.pt"):
        data = checkpoints.load_checkpoint(run_dir / name)
        own = distributed.digest({key: data[key] for key in MODELS})
        # each rank's digest of its own models, gathered by rank 0 as it saved
        assert data["world_size"] == 2 and data["model_digests"] == [own, own], name
    # every rank stepped its own environments
    assert not torch.equal(data["env_state"]["generator"], data["other_ranks"][0]["env_state"]["generator"])
    assert not torch.equal(data["env_state"]["xz"], data["other_ranks"][0]["env_state"]["xz"])
    # rank 0 alone wrote: one run folder, one TensorBoard writer, the run folder printed once
    assert [p.name for p in run_dir.parent.parent.iterdir()] == ["us_nav_state"]
    assert list(run_dir.parent.iterdir()) == [run_dir]
    files = sorted(p.name for p in run_dir.iterdir())
    events = [name for name in files if name.startswith("events.out.tfevents.")]
    assert len(events) == 1
    assert set(files) == {"config.yaml", "git.txt", "git", *events, *(f"model_{i}.pt" for i in range(ITERATIONS))}
    assert out.stdout.splitlines().count(str(run_dir)) == 1


def replay(cfg, data: dict, rank: int) -> dict[str, torch.Tensor]:
    """The episode extras rank `rank` of 2 logged in the iteration after checkpoint `data`, stepped
    again here (one process, one thread, as torchrun ran it) from the rank's saved environments,
    generators and the checkpoint's policy."""
    env = build_env(cfg, "train", process=Process(rank=rank, world_size=2, local_rank=rank, local_world_size=2))
    runner = Runner(env, train_config(cfg), None, "cpu")
    runner.alg.load(data, None, True)
    env.load_state_dict(rank_part(data, rank)["env_state"])
    set_rng_state(rank_part(data, rank)["rng"], "cpu")
    runner.alg.train_mode()
    obs, steps = runner.env.get_observations(), []
    with torch.inference_mode():
        for _ in range(cfg.agent.num_steps_per_env):
            obs, rewards, dones, extras = runner.env.step(runner.alg.act(obs))
            runner.alg.process_env_step(obs, rewards, dones, extras)
            steps.append(extras["log"])
    return concatenated(steps)


def test_logged_statistics_average_the_episodes_of_both_processes(two_ranks):
    run_dir, _ = two_ranks
    cfg, it = run_config(run_dir), 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun's processes ran with OMP_NUM_THREADS=1
    try:
        ranks = [replay(cfg, checkpoints.load_checkpoint(run_dir / f"model_{it - 1}.pt"), rank) for rank in (0, 1)]
    finally:
        torch.set_num_threads(threads)
    log = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    log.Reload()
    logged = {key: next(e.value for e in log.Scalars(key) if e.step == it) for key in ranks[0]}
    assert len(ranks[0]["Episode/success"]) > 0 and len(ranks[1]["Episode/success"]) > 0
    for key, value in logged.items():
        both = torch.cat([ranks[0][key], ranks[1][key]]).mean().item()
        assert value == pytest.approx(both, rel=1e-4, abs=1e-5), key
    # rank 0's own episodes alone would log other values: the check tells the two apart
    assert any(abs(value - ranks[0][key].mean().item()) > 1e-2 * (1 + abs(value)) for key, value in logged.items())
    # rsl-rl's mean return (of the last 100 episodes) too: in iteration 0 each of the 2 x 16 environments
    # ended one episode (random starts within 8 steps), the 32 whose Reward/<term> sums add up to their returns
    tags = [key for key in log.Tags()["scalars"] if key.startswith("Reward/") or key == "Train/mean_reward"]
    first = {key: log.Scalars(key)[0] for key in tags}
    assert {event.step for event in first.values()} == {0}
    terms = sum(event.value for key, event in first.items() if key.startswith("Reward/"))
    assert first["Train/mean_reward"].value == pytest.approx(terms, rel=1e-4, abs=1e-5)


def test_killed_distributed_run_resumes_exactly(two_ranks, tmp_path):
    straight, _ = two_ranks
    root = tmp_path / "killed"
    proc = subprocess.Popen(
        [*TORCHRUN, SCRIPT, *RUN, f"agent.max_iterations={ITERATIONS}", f"log_root={root}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(root.glob("us_nav_state/*/model_2.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun stops its workers wherever they are, as a cluster's scancel does
    proc.wait(timeout=60)
    run_dir = next(root.glob("us_nav_state/*"))
    stopped_at = int(checkpoints.latest_checkpoint(run_dir).stem.split("_")[1])
    assert 2 <= stopped_at < ITERATIONS - 1, "the stop came too late to test resuming"
    resumed = run([*TORCHRUN, SCRIPT, "task=us_nav_state", "resume=true", f"log_root={root}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} from model_{stopped_at}.pt" in resumed.stdout
    a, b = final(straight), final(run_dir)
    assert a["iter"] == b["iter"] == ITERATIONS - 1 and a["model_digests"] == b["model_digests"]
    for key in MODELS:
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for rank in (0, 1):
        ours, theirs = rank_part(a, rank), rank_part(b, rank)
        assert torch.equal(ours["rng"]["torch"], theirs["rng"]["torch"]), rank
        tensors = [k for k in ours["env_state"] if k != "scene"]  # the torch backend's scene state is empty
        assert all(torch.equal(ours["env_state"][k], theirs["env_state"][k]) for k in tensors), rank


def test_resuming_with_another_number_of_processes_is_refused(two_ranks, tmp_path):
    run_dir = Path(shutil.copytree(two_ranks[0], tmp_path / two_ranks[0].name))
    refused = r"written by a training of 2 process\(es\), this one has 1 \(WORLD_SIZE\): expected 2 processes"
    with pytest.raises(InputError, match=refused):
        train(compose_config([f"resume={run_dir}"]))
    assert checkpoints.latest_checkpoint(run_dir).name == f"model_{ITERATIONS - 1}.pt"


def test_two_by_16_environments_differ_from_one_by_32(two_ranks, tmp_path):
    """The same samples per iteration (2 x 16 x 8 = 1 x 32 x 8, as the synchronised observation
    normaliser counts them), the same model and layout; other environments: rank r has seed + r and
    the patients [r::2] (here one phantom each), so the policies differ."""
    one = run([sys.executable, SCRIPT, *RUN, "num_envs=32", "agent.max_iterations=2", f"log_root={tmp_path}"])
    assert one.returncode == 0, one.stderr[-3000:]
    single = final(Path(one.stdout.strip().splitlines()[-1]))
    several = checkpoints.load_checkpoint(two_ranks[0] / "model_1.pt")
    assert single["layout"] == several["layout"] and single["world_size"] == 1 and single["other_ranks"] == []
    for key in MODELS:
        assert several[key]["obs_normalizer.count"] == single[key]["obs_normalizer.count"] == 2 * 32 * 8
    assert distributed.digest({k: single[k] for k in MODELS}) != several["model_digests"][0]
    # patient_idx indexes a process's own patients: both phantoms in one process, one per rank in two
    assert single["env_state"]["patient_idx"].unique().tolist() == [0, 1]
    for rank in (0, 1):
        assert rank_part(several, rank)["env_state"]["patient_idx"].unique().tolist() == [0]
    cfg = compose_config(RUN)
    shares = [build_env(cfg, "train", process=Process(rank, 2, rank, 2)) for rank in (0, 1)]
    assert [[p.name for p in env.patients] for env in shares] == [[p.name] for p in build_env(cfg).patients]
    assert [env.seed for env in shares] == [cfg.seed, cfg.seed + 1]


def test_bad_process_settings_are_named(tmp_path, monkeypatch):
    # a rank outside the world: the script says so before any rendezvous
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}
    out = run([sys.executable, SCRIPT, *RUN, f"log_root={tmp_path}"], env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.startswith("error: RANK: expected an int in [0, WORLD_SIZE) = [0, 2), got 2")
    # more processes than training patients, before a run folder is made
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=r"patient.train: expected at least one patient per process for torchrun's 3"):
        train(compose_config([*RUN, f"log_root={tmp_path}"]))
    assert not list(tmp_path.iterdir())
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(InputError, match="LOCAL_RANK: expected the variable torchrun sets"):
        distributed.current()
    # the GPUs of a node: one per process, every process seeing all of them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(
        InputError,
        match=r"LOCAL_WORLD_SIZE=2 processes, LOCAL_RANK 1 on cuda:1, but 1 GPU\(s\) are visible "
        r"\(CUDA_VISIBLE_DEVICES='1'\)",
    ):
        distributed.process_device("cuda", Process(rank=1, world_size=2, local_rank=1, local_world_size=2), 1)
    with pytest.raises(InputError, match=r"device: expected cpu or cuda with torchrun's 2 processes"):
        distributed.process_device("cuda:1", Process(rank=0, world_size=2, local_rank=0, local_world_size=2), 2)
    two_nodes = Process(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert distributed.process_device("cuda", two_nodes, 2) == "cuda:1"
    assert distributed.process_device("cpu", two_nodes, 0) == "cpu"


def test_train_benchmark_reports_throughput_and_communication():
    out = run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchmark.py"),
            "train",
            "--task",
            "us_nav_state",
            "--nproc",
            "2",
            "--num-envs",
            "8",
            "--iterations",
            "3",
            "--device",
            "cpu",
            "--override",
            *SMALL_RUN,
            "agent.num_steps_per_env=8",
            "--json",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["nproc"] == 2 and result["timed_iterations"] == 1 and result["env_steps_per_s"] > 0
    # us_nav_state's MLPs (16 and 30 inputs, 256-128-64, 5 + 1 outputs, 5 std parameters): 4 bytes each, 20 updates
    assert result["parameters"] == 94987 and result["updates_per_iteration"] == 20
    assert result["grad_allreduce_bytes_per_iteration"] == 4 * 94987 * 20 < result["bytes_per_iteration"]
