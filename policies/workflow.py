"""What train.py and play.py share: environments from a Hydra config, run folders, checkpoints."""

from __future__ import annotations

import datetime
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from policies import checkpoints
from policies.distributed import Process
from policies.settings import check_settings
from sim.anatomy.patient_set import split_configs
from sim.anatomy.prepare import prepare_patient
from sim.envs.base import BatchedEnv
from sim.errors import InputError, require
from sim.resources import checkout_dir, conf_dir
from tasks import make_env
from tasks.schemas import register_schemas

RUN_CONFIG = "config.yaml"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/config.yaml composed with Hydra overrides (`key=value`, as on train.py's command line),
    outside a Hydra app: the Gymnasium ids, Isaac Lab's entry points and the benchmark use it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    # A Hydra app that ran earlier in this process (Isaac Lab's task resolution) leaves Hydra set up.
    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            return compose("config", overrides=list(overrides))
        except HydraException as err:  # one line: Hydra's message without its search path
            message = " ".join(
                line.strip() for line in str(err).split("Config search path")[0].splitlines() if line.strip()
            )
            raise InputError(f"overrides {list(overrides)}: {message}") from err


def patient_share(cfg: DictConfig, split: str, process: Process = Process()) -> list[dict]:
    """The `prepare_patient` configs of the `split` patients of `cfg.patient` that `process` trains
    on: all of them for a single process, patients[RANK::WORLD_SIZE] under torchrun; InputError
    where there are fewer patients than processes."""
    configs = split_configs(cfg.patient, split)
    require(
        len(configs) >= process.world_size,
        f"patient.{split}",
        f"at least one patient per process for torchrun's {process.world_size} processes "
        "(each trains on its own share, patients[RANK::WORLD_SIZE])",
        f"{len(configs)} patient(s)",
    )
    return configs[process.rank :: process.world_size]


def build_env(
    cfg: DictConfig, split: str = "train", num_envs: int | None = None, process: Process = Process()
) -> BatchedEnv:
    """The task environment of `cfg` on `cfg.device` over the `split` patients of `cfg.patient`,
    `num_envs` of them (None: `cfg.num_envs`); the settings are checked before any patient is prepared.

    Under torchrun `process` (`policies.distributed.current()`) steps its own share of the
    patients (`patient_share`) with seed cfg.seed + RANK; num_envs counts its own environments.
    """
    num_envs = check_settings(cfg, num_envs)
    patients = [prepare_patient(config) for config in patient_share(cfg, split, process)]
    task = OmegaConf.to_container(cfg.task, resolve=True)
    probe = OmegaConf.to_container(cfg.probe, resolve=True)
    backend = OmegaConf.to_container(cfg.backend, resolve=True)
    return make_env(task, patients, num_envs, cfg.device, process.seed(cfg.seed), probe, backend)


def train_config(cfg: DictConfig) -> dict:
    """rsl-rl's plain train config (learner=ppo and learners built on rsl-rl): the agent group
    (conf/agent/<task>/<learner>.yaml) plus the chosen log writer."""
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    if cfg.logger == "tensorboard":
        agent["logger"] = "tensorboard"
    elif cfg.logger == "wandb":
        agent["logger"] = {"class_name": "WandbLogWriter", "project_name": "sonolab"}
    else:
        raise InputError(f"logger {cfg.logger!r}: expected tensorboard or wandb")
    return agent


def new_run_dir(cfg: DictConfig) -> Path:
    """A fresh <log_root>/<task>/<timestamp>/ folder."""
    root = Path(cfg.log_root) / cfg.task.name
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root.mkdir(parents=True, exist_ok=True)
    run, suffix = root / stamp, 1
    while True:
        try:
            run.mkdir()  # atomic: of a sweep's jobs starting in the same second, each gets its own name
            return run
        except FileExistsError:
            run, suffix = root / f"{stamp}_{suffix}", suffix + 1


def write_run_info(run_dir: Path, cfg: DictConfig) -> None:
    """The resolved config and the version of the code that trains: the git state of the checkout
    sonolab runs from, or an installed sonolab's version (never the git state of whatever folder a
    wheel's site-packages happens to sit in)."""
    (run_dir / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    checkout = checkout_dir()
    if checkout is None:
        (run_dir / "git.txt").write_text(f"installed sonolab {importlib.metadata.version('sonolab')} (no checkout)\n")
        return
    git = ["git", "-C", str(checkout)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--short"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        commit, status = "unknown (not a git checkout)", ""
    (run_dir / "git.txt").write_text(f"commit {commit}\n{'dirty' if status else 'clean'}\n{status}")


def find_run(spec: str | bool, cfg: DictConfig, what: str = "checkpoint") -> tuple[Path, Path]:
    """(run folder, checkpoint) for `spec` (the setting named `what`): true / "last" (newest run of
    the task), a run folder, or a checkpoint file."""
    if spec is True or spec == "last":
        run = checkpoints.latest_run(Path(cfg.log_root) / cfg.task.name)
        return run, checkpoints.latest_checkpoint(run)
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return path, checkpoints.latest_checkpoint(path)
    if path.is_file():
        return path.parent, path
    raise InputError(f"{what} {spec!r}: expected last, a run folder or a checkpoint file")


def trained_run(cfg: DictConfig, task_overrides: Sequence[str] = ()) -> tuple[Path, Path]:
    """(run folder, checkpoint) of `cfg.checkpoint`, with the run's task, learner, agent and probe
    settings (what the policy was trained with) put into cfg in place, and then the command line's
    overrides of single task settings among task_overrides ("task.<key>=<value>", e.g.
    task.shield.enabled=true to evaluate with the shield on; "task=<name>" picks the task only).
    The patients are the run's own set (its split= chooses train or test) unless the command line
    names another (patient=totalseg_example); patient.<key>=<value> edits either.

    The checkpoint is read (as data only) before anything is built, so a crafted, foreign or
    broken file, or one trained for another task, fails here in a second."""
    run_dir, checkpoint = find_run(cfg.checkpoint, cfg)
    saved = run_config(run_dir)
    if saved is not None:
        with open_dict(cfg):
            cfg.task, cfg.learner, cfg.agent, cfg.probe = saved.task, saved.learner, saved.agent, saved.probe
            settings = [o.removeprefix("+") for o in task_overrides if o.removeprefix("+").startswith("task.")]
            if settings:
                cfg.task = OmegaConf.merge(cfg.task, OmegaConf.from_dotlist(settings).task)
            named = any(o.removeprefix("+").startswith("patient=") for o in task_overrides)
            if "patient" in saved and not named:  # the run's own patient set, edited by patient.<key>=...
                edits = [o.removeprefix("+") for o in task_overrides if o.removeprefix("+").startswith("patient.")]
                cfg.patient = OmegaConf.merge(saved.patient, OmegaConf.from_dotlist(edits).get("patient") or {})
    recorded = checkpoints.load_checkpoint(checkpoint).get("layout")
    if isinstance(recorded, dict) and recorded.get("task") != cfg.task.name:
        source = run_dir / RUN_CONFIG if saved is not None else f"the command line; {run_dir} has no {RUN_CONFIG}"
        raise InputError(
            f"checkpoint {checkpoint}: trained for task {recorded.get('task')}, "
            f"this run is task {cfg.task.name} (from {source}): "
            "expected a checkpoint of this task"
        )
    return run_dir, checkpoint


def run_config(run_dir: Path) -> DictConfig | None:
    """The config a run was trained with, if the run folder has one; InputError if it is not a
    readable config with task (and its name), agent and probe settings. A run from before the
    `learner` setting was trained by PPO: its learner is ppo."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        saved = OmegaConf.load(path)
    except Exception as err:  # YAML and OmegaConf raise many kinds of errors
        raise InputError(
            f"run config {path}: expected the YAML config the run was trained with, could not read it ({err})"
        ) from err
    complete = isinstance(saved, DictConfig) and all(
        isinstance(saved.get(k), DictConfig) for k in ("task", "agent", "probe")
    )
    if not complete or not isinstance(saved.task.get("name"), str):
        raise InputError(f"run config {path}: expected a mapping with task (and task.name), agent and probe settings")
    if "learner" not in saved:
        saved.learner = "ppo"
    return saved
