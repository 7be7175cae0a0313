"""Preemption and time limits on clusters: stop at a safe point, checkpoint, requeue, resume the same run.

A SLURM job is warned with a signal before its time limit (submitit asks for SIGUSR2, or
`$SUBMITIT_PREEMPT_SIGNAL`, `signal_delay_s` seconds ahead; `#SBATCH --signal=USR2@300` does the same
for a hand-written batch job) and, where the cluster is set up to, before a preemption. submitit's own
handler checkpoints and requeues at once, wherever the training is. `PreemptionGuard` defers that to a
safe point: while it is entered, the signal only records that it came; the training loop calls
`guard.check(save)` once per iteration, after the iteration's update and log, and once the signal has
come (to any rank of a distributed run) every rank stops there: `save` writes a complete checkpoint
(atomically, `policies.checkpoints.atomic_save`), and only then the job is requeued: by the handler
that was there before (submitit's: it pickles the job for requeue, requeues it and exits), or, in a
SLURM batch job without submitit, by `scontrol requeue` on rank 0, after which `Preempted` ends the
process.

A requeued job runs the same command again and must continue the same run folder. `record_run` writes
the run folder down where the next attempt of this job looks first, and `requeued_run` reads it back:

- in a Hydra multirun job (submitit's launchers, local or SLURM): `<hydra.sweep.dir>/<job num>/run.txt`;
  the sweep folder and job number are the same for every attempt of a job (submitit requeues the same
  pickled call), so re-running a sweep into the same `hydra.sweep.dir` also continues its runs;
- in a SLURM batch job outside a multirun (`scripts/slurm/train_multinode.sbatch`):
  `<log_root>/<task>/.slurm/<job id>.txt`, read only once SLURM has restarted the job
  (`SLURM_RESTART_COUNT` >= 1), so two trainings started one after the other in one allocation stay
  two runs.

Nothing happens at import; the guard changes the signal's handler only while it is entered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Callable

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from policies import checkpoints
from sim.errors import InputError

RUN_RECORD = "run.txt"  # in a multirun job's folder: the run folder it trains in
SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's setting (submitit.core.job_environment), default USR2
SignalHandler = Callable[[int, FrameType | None], object] | int | None  # what signal.signal returns


class Preempted(Exception):
    """The run stopped at a safe point after the preemption signal, with its checkpoint written.

    checkpoint: the file this rank saved (None on ranks that do not save); exit_code: 128 + the
    signal's number, the status of a process that signal ended.
    """

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        saved = (
            f"saved {checkpoint} (continue with resume={checkpoint.parent})"
            if checkpoint is not None
            else "rank 0 saved the checkpoint"
        )
        super().__init__(f"preempted ({name}): stopped after a training iteration, {saved}")
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


def preemption_signal() -> signal.Signals:
    """The signal submitit warns a job with before its time limit: SIG + $SUBMITIT_PREEMPT_SIGNAL, USR2 by
    default (the rule of submitit.JobEnvironment, read here so that runs outside submitit follow it too)."""
    name = os.environ.get(SIGNAL_ENV, "USR2")
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise InputError(
            f"environment variable {SIGNAL_ENV}={name!r}: expected a signal name without SIG, such as USR2"
        ) from None


class PreemptionGuard:
    """While entered, `signum` (default `preemption_signal()`) only records that it came; `check` acts on it.

    Enter it in the main thread around the training loop (Python runs signal handlers only there; in
    another thread the guard records nothing and `check` never stops). Leaving it restores the handler
    that was there before, whether or not the signal came.
    """

    def __init__(self, signum: signal.Signals | None = None) -> None:
        self.signum = signum if signum is not None else preemption_signal()
        self.requested = False  # this process received the signal
        self.previous: SignalHandler = None
        self.installed = False

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(self.signum, self._record)
            self.installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._restore()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        """The handler: note the signal and let the iteration finish (the training state stays consistent)."""
        self.requested = True

    def _restore(self) -> None:
        if self.installed:
            # None: the handler before was set outside Python and cannot be put back; the default is the nearest.
            signal.signal(self.signum, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False

    def check(self, save: Callable[[], Path | None]) -> None:
        """Call once per training iteration, at its end, on every rank. Returns at once unless the signal
        has come to this or any other rank; then `save()` writes this iteration's checkpoint (it returns
        the file, or None on the ranks that do not save) and the job is requeued: by the handler that
        was there before the guard (submitit's: it requeues the job and exits), else in a SLURM batch
        job by `scontrol requeue` from rank 0 (InputError where SLURM refuses). `Preempted` is raised
        where that handler returns or there is none."""
        if not _any_rank(self.requested):
            return
        handler, checkpoint, done = self.previous, None, False
        try:
            checkpoint = save()
            if not callable(handler) and _rank() == 0 and slurm_job_id() is not None:
                requeue_slurm_job()  # before any process leaves: srun --kill-on-bad-exit ends the job at the first exit
            done = True
        finally:
            # A barrier: no process leaves before rank 0 saved (and asked for the requeue), nor waits for
            # one that failed; a process that failed raises its own error from here.
            failed_elsewhere = _any_rank(not done)
        if failed_elsewhere:
            raise RuntimeError(
                "preempted: another process failed to write the checkpoint or to requeue the job (its error says why)"
            )
        if callable(handler):
            self._restore()  # a second signal during the hand-over goes to that handler
            handler(self.signum, None)  # the frame the signal interrupted is long gone
        # Otherwise the guard keeps recording until it is left: a second copy of the signal (SLURM sends it to
        # torchrun's workers and torchrun passes it on) must not end the process by the default action now.
        raise Preempted(self.signum, checkpoint)


def _rank() -> int:
    """This process's rank in the distributed run (0 when there is none)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank (a collective: every rank of the group must call it); the flag itself
    outside a distributed run."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    # NCCL reduces only CUDA tensors; gloo (CPU runs, tests) and mixed backends reduce CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def slurm_job_id() -> str | None:
    """This SLURM job's id as `scontrol` names it (`<array job>_<task>` in an array), None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job() -> None:
    """Ask SLURM to requeue this job (it then stops it and starts it again with the same id and command);
    InputError naming the job when SLURM refuses (an interactive allocation, a job submitted with
    --no-requeue) or `scontrol` is missing."""
    job = slurm_job_id()
    try:
        subprocess.run(["scontrol", "requeue", str(job)], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or err
        raise InputError(
            f"SLURM job {job}: expected `scontrol requeue {job}` to requeue it (a batch job submitted with "
            f"--requeue), it failed: {str(detail).strip()}; the checkpoint is written, continue with resume=<run>"
        ) from err


def _multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (any launcher)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _restarted() -> bool:
    """Whether SLURM has restarted this job (requeued it) at least once; InputError for a malformed count."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not count.isdigit():
        raise InputError(f"environment variable SLURM_RESTART_COUNT={count!r}: expected a count (SLURM sets it)")
    return int(count) >= 1


def job_record(cfg: DictConfig) -> Path | None:
    """The file where this job writes down its run folder (see the module's doc), None for a plain run."""
    if _multirun():
        return Path(HydraConfig.get().runtime.output_dir) / RUN_RECORD
    job = slurm_job_id()
    if job is not None:
        return Path(str(cfg.log_root)) / str(cfg.task.name) / ".slurm" / f"{job}.txt"
    return None


def record_run(cfg: DictConfig, run_dir: Path) -> None:
    """Write down `run_dir` as this job's run (atomically: a requeued attempt reads the old or the new one)."""
    record = job_record(cfg)
    if record is None:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    partial.write_text(f"{Path(run_dir).resolve()}\n")
    os.replace(partial, record)


def requeued_run(cfg: DictConfig) -> Path | None:
    """The run folder an earlier attempt of this job trained in, when it left a checkpoint there; None for
    the job's first attempt (or when that attempt stopped before its first checkpoint: start afresh).
    InputError naming the record when it is not a run folder's path."""
    record = job_record(cfg)
    if record is None or not record.is_file() or not (_multirun() or _restarted()):
        return None
    lines = record.read_text().splitlines()
    if len(lines) != 1 or not Path(lines[0]).is_absolute():
        raise InputError(f"run record {record}: expected one line, the absolute path of a run folder, got {lines!r}")
    run = Path(lines[0])
    return run if checkpoints.checkpoints(run) else None
