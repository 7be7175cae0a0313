"""Sweeps and preemption: Hydra multirun through submitit's launcher, the preemption guard's safe point,
requeue into the same run folder, exact continuation, and torchrun's processes stopping together.

The end-to-end tests run scripts/train.py with the real submitit local executor and send the real
signal submitit uses (SIGUSR2) to the job's process, as SLURM does before a time limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest
import torch
from omegaconf import OmegaConf

from policies import checkpoints, preemption
from policies.preemption import Preempted, PreemptionGuard
from sim.errors import InputError
from tests.tasks_helpers import ROOT, SMALL_RUN

T = TypeVar("T")
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
TINY = ["task=us_nav_state", "num_envs=4", "agent.num_steps_per_env=4", *SMALL_RUN]
# One thread per process: two jobs share the test machine's cores, and both runs compared bit for bit use the same.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))},
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
}


def wait_for(find: Callable[[], T | None], what: str, timeout: float = 240) -> T:
    """find()'s first answer that is not None, polled every 20 ms; fails naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = find()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def iterations(run_dir: Path) -> list[int]:
    return [int(path.stem.split("_")[1]) for path in checkpoints.checkpoints(run_dir)]


def same(a: object, b: object) -> bool:
    """Whether two checkpoint entries (nested dicts and lists of tensors, plain values) are equal, tensors bitwise."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# --- the guard, in this process -------------------------------------------------------------------------


def test_preemption_signal_is_submitits():
    from submitit.core.job_environment import JobEnvironment

    assert preemption.preemption_signal() == JobEnvironment._usr_sig() == signal.SIGUSR2


def test_preemption_signal_follows_submitits_setting_and_names_a_bad_one(monkeypatch):
    monkeypatch.setenv(preemption.SIGNAL_ENV, "HUP")
    assert preemption.preemption_signal() == signal.SIGHUP
    monkeypatch.setenv(preemption.SIGNAL_ENV, "NOPE")
    with pytest.raises(InputError, match="SUBMITIT_PREEMPT_SIGNAL='NOPE'"):
        preemption.preemption_signal()


def test_guard_saves_at_the_safe_point_then_hands_the_signal_to_the_handler_before_it():
    handled, saved = [], []

    def earlier_handler(signum, frame):  # the one submitit installs requeues the job here
        handled.append(signum)

    before = signal.signal(signal.SIGUSR2, earlier_handler)
    try:
        with PreemptionGuard() as guard:
            guard.check(lambda: saved.append("unrequested"))  # no signal yet: nothing happens
            os.kill(os.getpid(), signal.SIGUSR2)
            assert guard.requested and handled == [] and saved == []  # deferred, not handled where it landed
            with pytest.raises(Preempted) as stop:
                guard.check(lambda: saved.append("model_3.pt") or Path("model_3.pt"))
        assert saved == ["model_3.pt"] and handled == [signal.SIGUSR2]
        assert stop.value.checkpoint == Path("model_3.pt") and stop.value.exit_code == 128 + signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) is earlier_handler
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_guard_without_a_handler_before_it_raises_preempted_and_outlives_a_second_signal(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):  # a plain run: nobody to requeue it
        monkeypatch.delenv(name, raising=False)

    def save() -> Path:
        os.kill(os.getpid(), signal.SIGUSR2)  # torchrun's copy of SLURM's signal: it must not end the process now
        return Path("run/model_7.pt")

    before = signal.signal(signal.SIGUSR2, signal.SIG_DFL)  # the default action would end the process
    try:
        with pytest.raises(Preempted) as stop:
            with PreemptionGuard() as guard:
                os.kill(os.getpid(), signal.SIGUSR2)
                guard.check(save)
        assert stop.value.exit_code == 128 + signal.SIGUSR2 and "resume=run" in str(stop.value)
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_guard_restores_the_handler_and_ignores_a_signal_after_the_last_iteration():
    before = signal.getsignal(signal.SIGUSR2)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGUSR2) != before
        os.kill(os.getpid(), signal.SIGUSR2)  # the training ends before its next check: it simply ends
    assert guard.requested and signal.getsignal(signal.SIGUSR2) == before


# --- where a requeued job finds its run ------------------------------------------------------------------


def test_a_restarted_slurm_job_finds_the_run_it_recorded_and_a_first_attempt_does_not(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"log_root": str(tmp_path / "logs"), "task": {"name": "us_nav_state"}})
    run_dir = tmp_path / "logs" / "us_nav_state" / "2026-01-01_00-00-00"
    run_dir.mkdir(parents=True)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    preemption.record_run(cfg, run_dir)
    record = tmp_path / "logs" / "us_nav_state" / ".slurm" / "4242.txt"
    assert record.read_text() == f"{run_dir.resolve()}\n"
    (run_dir / "model_0.pt").write_bytes(b"")  # a run with a checkpoint (found by name)
    assert preemption.requeued_run(cfg) is None  # the first attempt: a second training in this allocation is new
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert preemption.requeued_run(cfg) == run_dir.resolve()
    (run_dir / "model_0.pt").unlink()  # the attempt stopped before its first checkpoint: start afresh
    assert preemption.requeued_run(cfg) is None
    record.write_text("relative/run\n")
    with pytest.raises(InputError, match=re.escape(f"run record {record}")):
        preemption.requeued_run(cfg)


def test_no_record_outside_a_cluster_job_or_sweep(tmp_path, monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    cfg = OmegaConf.create({"log_root": str(tmp_path), "task": {"name": "us_nav_state"}})
    assert preemption.job_record(cfg) is None and preemption.requeued_run(cfg) is None


# --- sweeps through submitit's local executor -------------------------------------------------------------


def test_local_sweep_runs_each_job_in_its_own_run_folder(tmp_path):
    logs, sweep = tmp_path / "logs", tmp_path / "sweep"
    done = subprocess.run(
        [*TRAIN, "-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY, "agent.max_iterations=2"]
        + [f"log_root={logs}", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(logs.glob("us_nav_state/*"))
    assert len(runs) == 2
    for job, seed in enumerate((0, 1)):  # the sweeper's order: job 0 is seed=0
        run_dir = Path((sweep / str(job) / preemption.RUN_RECORD).read_text().strip())
        assert run_dir in runs and OmegaConf.load(run_dir / "config.yaml").seed == seed
        assert iterations(run_dir) == [0, 1]


def test_preempted_job_checkpoints_requeues_and_ends_like_an_uninterrupted_run(tmp_path):
    # save_interval 100: the only checkpoints besides the first and last are the ones preemption writes.
    args = [*TINY, "agent.max_iterations=60", "agent.save_interval=100"]
    logs = tmp_path / "logs"
    sweep = subprocess.Popen(  # the default sweep folder, multirun/<date>/<time> under cwd: requeue must find it again
        [*TRAIN, "-m", "hydra/launcher=submitit_local", *args, f"log_root={logs}"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = wait_for(lambda: next(logs.glob("us_nav_state/*/model_0.pt"), None), "the job's first checkpoint")
        run_dir = first.parent
        submitit = next(tmp_path.glob("multirun/*/*/.submitit/[0-9]*"))  # the local job's id is its controller's pid
        (task,) = children(int(submitit.name))
        os.kill(task, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
        out, err = sweep.communicate(timeout=240)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    job_out = (submitit / f"{submitit.name}_0_log.out").read_text()
    assert job_out.count("Starting with JobEnvironment") == 2, job_out[-3000:]  # submitit started it again
    assert f"[sonolab] requeued job: continuing its run {run_dir.resolve()}" in job_out, job_out[-3000:]
    assert list(logs.glob("us_nav_state/*")) == [run_dir]  # one run folder: the requeued job continued it
    saved = iterations(run_dir)
    assert len(saved) == 3 and saved[0] == 0 and 0 < saved[1] < 59 and saved[2] == 59, saved

    straight = subprocess.run(
        [*TRAIN, *args, f"log_root={tmp_path / 'straight'}"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = checkpoints.load_checkpoint(run_dir / "model_59.pt")
    b = checkpoints.load_checkpoint(next((tmp_path / "straight").glob("us_nav_state/*/model_59.pt")))
    for key in ("actor_state_dict", "critic_state_dict", "env_state"):
        assert same(a[key], b[key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


# --- torchrun: every process stops after the same iteration and the run resumes exactly ----------------------


def test_torchrun_training_stops_all_processes_at_one_safe_point_and_resumes_exactly(tmp_path):
    # As scripts/slurm/train_multinode.sbatch runs it: torchrun handles SIGUSR2 by passing it to its workers.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=0"]
    torchrun += ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2", "--shutdown-timeout=60", TRAIN[1]]
    args = [*TINY, "agent.max_iterations=40", "agent.save_interval=100"]
    logs = tmp_path / "logs"
    launcher = subprocess.Popen(
        [*torchrun, *args, f"log_root={logs}"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        run_dir = wait_for(lambda: next(logs.glob("us_nav_state/*/model_0.pt"), None), "the first checkpoint").parent
        launcher.send_signal(signal.SIGUSR2)  # to torchrun only: it passes the signal on to both workers
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert b"[sonolab] preempted (SIGUSR2)" in err, err[-3000:]
    saved = iterations(run_dir)
    assert len(saved) == 2 and saved[0] == 0 and 0 < saved[1] < 39, saved  # the safe point's checkpoint
    assert checkpoints.load_checkpoint(checkpoints.latest_checkpoint(run_dir))["world_size"] == 2  # both parts

    def train(*overrides: str) -> None:
        done = subprocess.run([*torchrun, *overrides], cwd=tmp_path, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    train("task=us_nav_state", f"resume={run_dir}", f"log_root={logs}")
    train(*args, f"log_root={tmp_path / 'straight'}")
    a = checkpoints.load_checkpoint(run_dir / "model_39.pt")
    b = checkpoints.load_checkpoint(next((tmp_path / "straight").glob("us_nav_state/*/model_39.pt")))
    for key in ("actor_state_dict", "critic_state_dict", "env_state", "other_ranks"):  # other_ranks: rank 1's part
        assert same(a[key], b[key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
