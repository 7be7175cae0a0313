"""`Runner`: rsl-rl's OnPolicyRunner with atomic checkpoints and exact resume.

Each checkpoint holds, beside rsl-rl's models and optimiser, the environment's full state and
the torch random number generators, so training resumed from it continues exactly as the
uninterrupted run would have (bit for bit on CPU), and the task and observation layout it was
trained for, which every load compares with this runner's environment before copying weights.
"""

from __future__ import annotations

import os

import torch
from rsl_rl.runners import OnPolicyRunner

from policies import checkpoints
from sim.envs.adapters.rsl_rl import RslRlVecEnv
from sim.envs.base import BatchedEnv


class Runner(OnPolicyRunner):
    """OnPolicyRunner over a `BatchedEnv`. train_cfg: rsl-rl's plain config dict (conf/agent);
    env_cfg: the resolved task config stored with the logs."""

    def __init__(
        self, env: BatchedEnv, train_cfg: dict, log_dir: str | None, device: str = "cpu", env_cfg: dict | None = None
    ) -> None:
        self.batched_env = env
        self.layout = checkpoints.layout(env)
        super().__init__(RslRlVecEnv(env, env_cfg), train_cfg, log_dir, device)

    def save(self, path: str, infos: dict | None = None) -> None:
        state = self.alg.save()
        state.update(
            format=checkpoints.FORMAT,
            iter=self.current_learning_iteration,
            infos=infos,
            layout=self.layout,
            env_state=self.batched_env.state_dict(),
            rng={
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        )
        checkpoints.atomic_save(state, path)
        self.logger.save_model(path, self.current_learning_iteration)

    def load(
        self, path: str, load_cfg: dict | None = None, strict: bool = True, map_location: str | None = None
    ) -> dict:
        """Restore models and optimiser; with `resume` also the environment and the generators.

        After a full load the next iteration is the one after the checkpoint's.
        A checkpoint of another task, observation layout or network is refused (InputError naming
        both tasks) before any weights are copied.
        """
        data = checkpoints.load_checkpoint(path, map_location or self.device)
        models = {key: state for key, state in self.alg.save().items() if "optimizer" not in key}
        checkpoints.check_compatible(data, path, self.layout, models)
        self.alg.load(data, load_cfg, strict)
        return data

    def resume(self, path: str | os.PathLike) -> int:
        """Continue from checkpoint `path` exactly; returns the next iteration's index."""
        data = self.load(str(path))
        self.batched_env.load_state_dict(data["env_state"])
        torch.set_rng_state(data["rng"]["torch"])
        if data["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(data["rng"]["cuda"])
        self.current_learning_iteration = data["iter"] + 1
        return self.current_learning_iteration
