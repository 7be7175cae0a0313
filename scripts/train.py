"""Train a policy with the `learner` (default ppo: rsl-rl PPO; Hydra config: conf/config.yaml).

    python scripts/train.py task=us_nav_state                 # fast state-based baseline
    python scripts/train.py task=us_nav num_envs=256 seed=1   # images
    python scripts/train.py task=us_nav_state resume=true     # continue the newest run exactly

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

The code is policies/cli/train.py, which is also the `sonolab-train` command of an installed sonolab.
"""

from policies.cli.train import check_resume_overrides, main, train

__all__ = ["check_resume_overrides", "main", "train"]  # callers and tests import these from scripts.train

if __name__ == "__main__":
    main()
