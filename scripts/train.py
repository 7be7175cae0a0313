"""Train a policy with rsl-rl PPO (Hydra config: conf/config.yaml).

    python scripts/train.py task=us_nav_state                 # fast state-based baseline
    python scripts/train.py task=us_nav num_envs=256 seed=1   # images
    python scripts/train.py task=us_nav_state resume=true     # continue the newest run exactly

Each run writes logs/<task>/<timestamp>/: config.yaml (resolved), git.txt, TensorBoard events and
checkpoints model_<iteration>.pt (written atomically). The last line printed is the run folder.
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from policies.runner import Runner
from policies.workflow import REPO_ROOT, build_env, find_run, new_run_dir, run_config, train_config, write_run_info
from sim.errors import InputError


def train(cfg: DictConfig) -> str:
    if cfg.resume:
        run_dir, checkpoint = find_run(cfg.resume, cfg)
        saved = run_config(run_dir)
        if saved is None:
            raise InputError(f"resume {cfg.resume!r}: run folder {run_dir} has no config.yaml")
        cfg = saved  # the run continues with the settings it started with
        print(f"[sonolab] resuming {run_dir} from {checkpoint.name}")
    else:
        run_dir, checkpoint = new_run_dir(cfg), None
        write_run_info(run_dir, cfg)
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg, "train")
    runner = Runner(env, train_config(cfg), str(run_dir), cfg.device, env_cfg=OmegaConf.to_container(cfg, resolve=True))
    runner.add_git_repo_to_log(str(REPO_ROOT))
    total = int(cfg.agent.max_iterations)
    start = runner.resume(checkpoint) if checkpoint is not None else 0
    if start < total:
        runner.learn(total - start, init_at_random_ep_len=bool(cfg.agent.init_at_random_ep_len) and checkpoint is None)
    return str(run_dir)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(train(cfg))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
