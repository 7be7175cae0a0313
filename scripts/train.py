"""Train a policy with the `learner` (default ppo: rsl-rl PPO; Hydra config: conf/config.yaml).

A thin wrapper: the code, its usage and options are in policies/cli/train.py, which is also the
`sonolab-train` command of an installed sonolab.
"""

from policies.cli.train import check_resume_overrides, main, train

__all__ = ["check_resume_overrides", "main", "train"]  # callers and tests import these from scripts.train

if __name__ == "__main__":
    main()
