"""Train a policy with the `learner` (default ppo: rsl-rl PPO; Hydra config: conf/config.yaml).

    sonolab-train task=us_nav_state                 # fast state-based baseline
    sonolab-train task=us_nav num_envs=256 seed=1   # images
    sonolab-train task=us_nav_state resume=true     # continue the newest run exactly

Each run writes logs/<task>/<timestamp>/: config.yaml (resolved), git.txt, TensorBoard events and
checkpoints model_<iteration>.pt (written atomically). The last line printed is the run folder.
A training that fails before its first checkpoint removes the run folder it created. A resume
continues with the run's own config.yaml: it refuses task=<another task> and overrides of task,
learner, agent, patient, probe, backend, num_envs or seed, reports other overrides as ignored, and removes
the temporary files of checkpoint writes that were killed.

Several processes train one policy under torchrun (policies/distributed.py):

    torchrun --standalone --nproc_per_node=2 scripts/train.py task=us_nav_state num_envs=32   # gloo on CPU
    torchrun --nproc_per_node=8 scripts/train.py task=us_nav device=cuda                     # one GPU each

Process RANK steps num_envs environments of its own (num_envs is per process) on cpu or
cuda:LOCAL_RANK, with seed + RANK, over the training patients [RANK::WORLD_SIZE]; rank 0 alone
chooses or finds the run folder and writes config.yaml, git.txt, the logs (episode statistics of
every process) and the checkpoints (every process's environments and generators). A resume needs
as many processes as the run had.

The `sonolab-train` command (installed sonolab, any folder) and scripts/train.py run `main`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from policies import checkpoints, distributed, learners, preemption
from policies.settings import check_settings
from policies.workflow import build_env, find_run, new_run_dir, patient_share, run_config, write_run_info
from sim.errors import InputError
from sim.memory import keep_freed_memory
from sim.resources import conf_dir
from tasks.schemas import register_schemas

# Settings a resumed run keeps from its config.yaml: a different value would change the training.
TRAINING_SETTINGS = ("task", "learner", "agent", "patient", "probe", "backend", "num_envs", "seed", "dataset")
FINDS_THE_RUN = ("resume", "log_root")  # read to find the run, not to train it


def setting(cfg: DictConfig, key: str) -> object:
    """The plain value of dotted `key` in cfg (None where it is absent)."""
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def check_resume_overrides(overrides: Sequence[str], cfg: DictConfig, saved: DictConfig, run_dir: Path) -> list[str]:
    """The command-line `overrides` a resume of run_dir ignores (other values than the run's own, of
    settings that do not change the training); InputError for a task other than the run's and for
    overrides that would change the training (TRAINING_SETTINGS), since the run continues with its own."""
    keys = [
        override.split("=", 1)[0].lstrip("+~").split("@")[0] for override in overrides
    ]  # Hydra: [+|++|~]key[@package]=value
    if "task" in keys and cfg.task.name != saved.task.name:
        raise InputError(
            f"resume {run_dir}: the run is task {saved.task.name}, the command line asks for task {cfg.task.name}: "
            "expected the run's task or no task="
        )
    changed, ignored = [], []
    for override, key in zip(overrides, keys):
        top = key.split(".")[0]
        if key == "task" or top in FINDS_THE_RUN or setting(cfg, key) == setting(saved, key):
            continue
        (changed if top in TRAINING_SETTINGS else ignored).append(override)
    if changed:
        raise InputError(
            f"resume {run_dir}: overrides {changed} would change the training, "
            "but a resumed run continues with the settings in its "
            f"{run_dir / 'config.yaml'}: expected none of {list(TRAINING_SETTINGS)} "
            "(except task=<the run's task>); start a new run to change them"
        )
    return ignored


@contextlib.contextmanager
def removed_without_checkpoint(run_dir: Path) -> Iterator[None]:
    """Delete run_dir (a folder this training created) if the training fails before writing a
    checkpoint, so no empty run is left for `checkpoint=last` or `resume=true` to trip over."""
    try:
        yield
    except BaseException:  # KeyboardInterrupt included
        if not checkpoints.checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def new_run(cfg: DictConfig) -> Path:
    """A new run folder for cfg with its config.yaml and git.txt (rank 0's part of starting a run)."""
    run_dir = new_run_dir(cfg)
    preemption.record_run(cfg, run_dir)  # where a requeued attempt of this cluster job finds it
    with removed_without_checkpoint(run_dir):
        write_run_info(run_dir, cfg)
    return run_dir


def resumed_run(cfg: DictConfig, overrides: Sequence[str]) -> tuple[Path, Path, DictConfig]:
    """(run folder, checkpoint, the run's own config) that `cfg.resume` continues, with the command
    line's `overrides` checked against the run's, and the killed checkpoint writes removed (rank 0's part)."""
    run_dir, checkpoint = find_run(cfg.resume, cfg, "resume")
    preemption.record_run(cfg, run_dir)  # a requeue continues this folder, not the newest run of resume=true
    saved = run_config(run_dir)
    if saved is None:
        raise InputError(f"resume {cfg.resume!r}: run folder {run_dir} has no config.yaml")
    ignored = check_resume_overrides(overrides, cfg, saved, run_dir)
    if ignored:
        print(f"[sonolab] resume: ignoring {ignored}: the run continues with the settings in its config.yaml")
    for tmp in checkpoints.remove_temporaries(run_dir):
        print(f"[sonolab] removed {tmp.name}, left by a checkpoint write that was killed")
    print(f"[sonolab] resuming {run_dir} from {checkpoint.name}")
    return run_dir, checkpoint, saved


def check_process(cfg: DictConfig, process: distributed.Process) -> str:
    """The device `process` trains cfg's run on; InputError for a device or patient set that does not
    fit torchrun's processes (fewer GPUs or training patients than processes)."""
    patient_share(cfg, "train", process)
    return distributed.process_device(cfg.device, process)


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> str:
    """Train (or resume) the run of cfg; returns its folder. overrides: the command line's
    `key=value` settings, which a resume checks against the run's own. Under torchrun every process
    calls it; rank 0 alone makes or finds the run folder and writes into it."""
    check_settings(cfg)  # before a run folder is made or a patient prepared
    process = distributed.current()
    requeued = preemption.requeued_run(cfg)  # a requeued cluster job continues its earlier attempt's run
    if requeued is not None:
        cfg.resume = str(requeued)
        if process.rank == 0:
            print(f"[sonolab] requeued job: continuing its run {requeued}")
    if not cfg.resume:
        check_process(cfg, process)
    with distributed.session(process):
        if not cfg.resume:
            run_dir = distributed.from_rank0(lambda: new_run(cfg))
            with removed_without_checkpoint(run_dir) if process.rank == 0 else contextlib.nullcontext():
                return learn(cfg, run_dir, None, process)
        run_dir, checkpoint, saved = distributed.from_rank0(lambda: resumed_run(cfg, overrides))
        return learn(saved, run_dir, checkpoint, process)  # the run continues with the settings it started with


def learn(cfg: DictConfig, run_dir: Path, checkpoint: Path | None, process: distributed.Process) -> str:
    """Run cfg's training (by cfg's learner) in run_dir, from scratch or continuing exactly from
    `checkpoint`: `process`'s share of it on its own device, with its own seed."""
    learner = learners.get(cfg.learner)
    cfg = cfg.copy()
    cfg.device = check_process(cfg, process)  # what this process's environments and learner run on
    distributed.use_device(cfg.device)
    torch.manual_seed(process.seed(int(cfg.seed)))
    env = build_env(cfg, "train", process=process)
    learner.train(cfg, env, run_dir, checkpoint)
    return str(run_dir)


register_schemas()  # conf/ starts from the config dataclasses (tasks/schemas.py)


# conf/hydra/launcher/submitit_{slurm,local}.yaml carry the plugin's schema names (the names users type), which
# Hydra matches to the schemas with a deprecation notice on every composition: expected here, so not shown.
SCHEMA_MATCHING_NOTICE = r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema with the same name"


def main() -> None:
    """`sonolab-train` / `python scripts/train.py`: Hydra's command line (overrides, -m, --cfg) around `run`."""
    warnings.filterwarnings("ignore", message=SCHEMA_MATCHING_NOTICE, category=UserWarning)
    run()


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> None:
    keep_freed_memory()  # a process-wide allocator choice (sim.memory): made by the program, not by an import
    try:
        run_dir = train(cfg, list(HydraConfig.get().overrides.task))
        if distributed.current().rank == 0:  # one line for a torchrun of several processes
            print(run_dir)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except preemption.Preempted as stop:  # stopped at a safe point with its checkpoint written
        print(f"[sonolab] {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
