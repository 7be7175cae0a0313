"""Learning curves: every checkpoint of a run evaluated on training and held-out patients.

    sonolab-curve checkpoint=logs/us_nav/<run> num_envs=128
    sonolab-curve checkpoint=last curve.splits=[test] curve.also=[]

For each checkpoint `model_<it>.pt` of the run (every curve.every-th, and the last) and each
evaluation set, every environment plays one episode with the deterministic policy, as
`sonolab-play` does: the splits in curve.splits of the patient set (patient=..., the task's
default), then the test split of each patient set named in curve.also (conf/patient/<name>.yaml,
e.g. totalseg_example, the real CT). Every evaluation starts from the same seed, so checkpoints
meet the same episodes. Writes <run>/curve/learning_curve.json (per checkpoint: iteration,
train_time_s, and per set the task's numeric metrics: success_rate, and for us_nav
pos_err_mm_mean, ...) and learning_curve.png (success against training time, and the metric
curve.error beside it); the last line printed is the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from policies import checkpoints, learners
from policies.evaluation import evaluate
from policies.workflow import build_env, trained_run
from sim.errors import InputError, require, require_int
from sim.resources import conf_dir
from tasks import registry
from tasks.schemas import register_schemas


def evaluation_sets(cfg: DictConfig) -> dict[str, tuple[DictConfig, str]]:
    """{label: (config with its patient set, split)}: curve.splits of cfg.patient, then the test
    split of each set in curve.also. InputError naming the setting for an unknown split or set."""
    splits, also = list(cfg.curve.splits), list(cfg.curve.also)
    require(set(splits) <= {"train", "test"}, "curve.splits", "a list of train and test", splits)
    require(bool(splits or also), "curve.splits and curve.also", "at least one evaluation set", [])
    sets = {split: (cfg, split) for split in splits}
    for name in also:
        path = conf_dir() / "patient" / f"{name}.yaml"
        require(path.is_file(), "curve.also", f"patient sets in {path.parent}", repr(name))
        other = cfg.copy()
        with open_dict(other):
            other.patient = OmegaConf.load(path)
        sets[name] = (other, "test")
    return sets


def curve(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Evaluate the run's checkpoints (see the module docstring); returns what it writes."""
    every = require_int(cfg.curve.every, "curve.every", 1)
    run_dir, _ = trained_run(cfg, overrides)
    error = cfg.curve.error
    known = registry.spec(cfg.task.name).metrics
    require(error is None or error in known, "curve.error", f"null or one of {cfg.task.name}'s {sorted(known)}", error)
    found = checkpoints.checkpoints(run_dir)
    require(bool(found), f"run {run_dir}", "checkpoints model_<it>.pt", "none")
    chosen = found[::every] if found[-1] in found[::every] else [*found[::every], found[-1]]
    sets = evaluation_sets(cfg)
    envs = {label: build_env(set_cfg, split) for label, (set_cfg, split) in sets.items()}
    points = []
    for path in chosen:
        data = checkpoints.load_checkpoint(path)
        point = {"checkpoint": path.name, "iteration": int(data["iter"]), "train_time_s": data.get("train_time_s")}
        for label, env in envs.items():
            trained = learners.get(cfg.learner).load_policy(sets[label][0], env, path)
            env.generator.manual_seed(int(cfg.seed))  # the same episodes for every checkpoint
            metrics = evaluate(env, learners.ActionChunks(trained), cost_limits=trained.cost_limits)
            point[label] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        points.append(point)
        print(json.dumps(point), file=sys.stderr)
    out = run_dir / "curve"
    out.mkdir(exist_ok=True)
    result = {"task": cfg.task.name, "run": str(run_dir), "sets": list(sets), "points": points}
    (out / "learning_curve.json").write_text(json.dumps(result, indent=1))
    result["picture"] = str(plot(result, out / "learning_curve.png", error))
    return result


def plot(result: dict, path: Path, error: str | None = None) -> Path:
    """Success (%) of each evaluation set against training time (min) as a PNG at `path`, and
    beside it the metric `error` (e.g. pos_err_mm_mean) where one is named."""
    import matplotlib

    matplotlib.use("Agg")  # off screen
    from matplotlib import pyplot as plt

    points = result["points"]
    timed = all(p["train_time_s"] is not None for p in points)
    x = [p["train_time_s"] / 60 if timed else p["iteration"] for p in points]
    panels = [("success_rate", "success (%)", 100.0)] + ([(error, error, 1.0)] if error else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), dpi=120, squeeze=False)
    for ax, (metric, name, scale) in zip(axes[0], panels):
        for label in result["sets"]:
            ax.plot(x, [scale * p[label][metric] for p in points], marker="o", ms=3, label=label)
        ax.set_xlabel("training time (min)" if timed else "iteration")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylim(-2, 102)
    axes[0][0].legend()
    fig.suptitle(f"{result['task']}: each checkpoint, one episode per environment")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


register_schemas()  # conf/ starts from the config dataclasses (tasks/schemas.py)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        torch.manual_seed(int(cfg.seed))
        print(json.dumps(curve(cfg, list(HydraConfig.get().overrides.task))))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
