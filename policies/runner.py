"""`Runner`: rsl-rl's OnPolicyRunner with atomic checkpoints, exact resume and torchrun's processes.

Each checkpoint holds, beside rsl-rl's models and optimiser, the environment's full state and
the torch random number generators, so training resumed from it continues exactly as the
uninterrupted run would have (bit for bit on CPU), and the task and observation layout it was
trained for, which every load compares with this runner's environment before copying weights.

Under torchrun (`policies.distributed`) each process runs a Runner over its own environments and
rank 0 alone writes logs and checkpoints. `RunLogger` averages the episode statistics over every
process, and on the iterations where rank 0 saves it gathers each process's part of the checkpoint
(rsl-rl calls `save` on rank 0 alone, so `save` itself cannot communicate). A checkpoint records
`world_size` (the number of processes that wrote it; 1 where the key is absent), each rank's
`model_digests`, rank 0's environment state and generators where a single process keeps its own
(`env_state`, `rng`) and ranks 1 ... world_size - 1's in `other_ranks`. It resumes only with as
many processes, each restoring its own part.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Callable

import torch
from rsl_rl.runners import OnPolicyRunner
from rsl_rl.utils.logger import Logger
from torch.utils.tensorboard import SummaryWriter

from policies import checkpoints, distributed
from policies.preemption import PreemptionGuard
from sim.envs.adapters.rsl_rl import RslRlVecEnv
from sim.envs.base import BatchedEnv
from sim.errors import InputError, require


def rng_state(device: str) -> dict:
    """The torch generators a process draws from: {"torch": the CPU generator's state, "device": the
    state of `device`'s CUDA generator, None on the CPU}."""
    dev = torch.device(device)
    return {"torch": torch.get_rng_state(), "device": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}


def set_rng_state(rng: dict, device: str) -> None:
    """Restore an `rng_state(device)`; checkpoints written before it hold every GPU's generator as "cuda" (a list)."""
    torch.set_rng_state(rng["torch"])
    if rng.get("device") is not None:
        torch.cuda.set_rng_state(rng["device"], torch.device(device))
    elif rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])


def concatenated(steps: list[dict]) -> dict[str, torch.Tensor]:
    """{key: (M,) float values} of per-step episode extras (extras["log"]: (M_step,) tensors), in step
    order; a number or 0-d tensor counts as one value, as rsl-rl's Logger reads them."""
    keys = dict.fromkeys(key for step in steps for key in step)
    return {
        key: torch.cat([torch.as_tensor(step[key], dtype=torch.float).reshape(-1) for step in steps if key in step])
        for key in keys
    }


class RunLogger(Logger):
    """rsl-rl's Logger over every process of a training.

    rsl-rl's own keeps the episode statistics of rank 0's environments only. Here every process books
    its ended episodes (return, length, the environment's extras["log"] values), and `log`, which every
    process calls once per iteration, gathers them to rank 0, whose rsl-rl Logger then writes averages
    over all environments. On the iterations where rank 0 saves (every save_interval and the last) it
    also gathers every process's `rank_state()` for the checkpoint (`collect_rank_states`).
    """

    def __init__(
        self, rank_state: Callable[[], dict], end_of_iteration: Callable[[], None], **logger_args: Any
    ) -> None:
        super().__init__(**logger_args)
        self.rank_state = rank_state
        self.algorithm: object = None  # the runner's algorithm, whose constraint statistics are logged if it has any
        self.end_of_iteration = end_of_iteration  # every process, after each iteration's log (Runner.end_of_iteration)
        self.ended = self._no_episodes()  # {statistic: values of the episodes ended since the last log}
        self._gathered: tuple[int, list | None] = (-1, None)  # (iteration, every process's rank_state())

    def _running(self) -> dict[str, tuple[torch.Tensor, deque]]:
        """{statistic: (its running sum per environment (N,), rsl-rl's buffer of the last episodes' values)}."""
        running = {"reward": (self.cur_reward_sum, self.rewbuffer), "length": (self.cur_episode_length, self.lenbuffer)}
        if self.cfg["algorithm"].get("rnd_cfg"):
            running["extrinsic"] = (self.cur_ereward_sum, self.erewbuffer)
            running["intrinsic"] = (self.cur_ireward_sum, self.irewbuffer)
        return running

    def _no_episodes(self) -> dict[str, list[float]]:
        return {name: [] for name in self._running()}

    def process_env_step(
        self, rewards: torch.Tensor, dones: torch.Tensor, extras: dict, intrinsic_rewards: torch.Tensor | None = None
    ) -> None:
        """rsl-rl's bookkeeping of one step (rewards, dones (N,)), on every process: rsl-rl's skips it
        where it does not write."""
        if "episode" in extras:
            self.ep_extras.append(extras["episode"])
        elif "log" in extras:
            self.ep_extras.append(extras["log"])
        step = {"reward": rewards if intrinsic_rewards is None else rewards + intrinsic_rewards, "length": 1}
        if intrinsic_rewards is not None:
            step.update(extrinsic=rewards, intrinsic=intrinsic_rewards)
        ended = (dones > 0).nonzero(as_tuple=False)[:, 0]
        for name, (running, _) in self._running().items():
            running += step[name]
            self.ended[name].extend(running[ended].tolist())
            running[ended] = 0

    def log(self, it: int, start_it: int, total_it: int, *args: Any, **kwargs: Any) -> None:
        """rsl-rl's log of iteration `it` over every process's episodes (a collective under torchrun)."""
        parts = distributed.gather({"extras": concatenated(self.ep_extras), "ended": self.ended})
        self.ep_extras.clear()
        self.ended = self._no_episodes()
        for part in parts or ():  # rank 0 (or a single process): every rank's episodes, in rank order
            if part["extras"]:
                self.ep_extras.append(part["extras"])
            for name, (_, buffer) in self._running().items():
                buffer.extend(part["ended"][name])
        if self.gpu_world_size > 1 and (it % self.cfg["save_interval"] == 0 or it == total_it - 1):
            self.collect_rank_states(it)  # rank 0 saves after this log (OnPolicyRunner.learn)
        super().log(it, start_it, total_it, *args, **kwargs)
        self.write_constraints(it)
        self.ep_extras.clear()  # rsl-rl clears it only where it writes
        self.end_of_iteration()

    def write_constraints(self, it: int) -> None:
        """Write a constrained algorithm's statistics of iteration `it` (its `constraint_log()`:
        {"Constraint/<statistic>/<cost>": value}) where this process writes, and print them."""
        constraint_log = getattr(self.algorithm, "constraint_log", None)
        if constraint_log is None or self.writer is None:
            return
        stats = constraint_log()
        for key, value in stats.items():
            self.writer.add_scalar(key, value, it)
        print("  ".join(f"{key.removeprefix('Constraint/')}: {value:.4g}" for key, value in stats.items()))

    def collect_rank_states(self, it: int) -> None:
        """Gather every process's `rank_state()` to rank 0 for the checkpoint of iteration `it`; a
        collective: every process calls it before rank 0 saves."""
        self._gathered = (it, distributed.gather(self.rank_state()))

    def rank_states(self, it: int) -> list[dict]:
        """Every process's `rank_state()` (rank order) gathered for iteration `it`, on rank 0."""
        gathered_it, parts = self._gathered
        if gathered_it != it or parts is None:
            raise RuntimeError(
                f"saving iteration {it}: every process's checkpoint part was last gathered at iteration {gathered_it}; "
                f"under torchrun every process calls logger.collect_rank_states({it}) before rank 0 saves"
            )
        return parts


class Runner(OnPolicyRunner):
    """OnPolicyRunner over a `BatchedEnv`. train_cfg: rsl-rl's plain config dict (conf/agent);
    env_cfg: the resolved task config stored with the logs. device: cpu or cuda[:<index>]; under
    torchrun this process's own (`distributed.process_device`)."""

    logger: RunLogger

    def __init__(
        self, env: BatchedEnv, train_cfg: dict, log_dir: str | None, device: str = "cpu", env_cfg: dict | None = None
    ) -> None:
        self.batched_env = env
        self.layout = checkpoints.layout(env)
        super().__init__(RslRlVecEnv(env, env_cfg), train_cfg, log_dir, device)
        # OnPolicyRunner builds rsl-rl's Logger and has no hook for another: replace it (it has written nothing yet)
        self.logger = RunLogger(
            self.rank_state,
            self.end_of_iteration,
            log_dir=log_dir,
            cfg=self.cfg,
            env_cfg=self.env.cfg,
            num_envs=self.env.num_envs,
            is_distributed=self.is_distributed,
            gpu_world_size=self.gpu_world_size,
            gpu_global_rank=self.gpu_global_rank,
            device=self.device,
        )
        self.logger.algorithm = self.alg
        self.preemption = PreemptionGuard()  # the cluster's preemption / time-limit signal (policies.preemption)

    def learn(self, num_learning_iterations: int, init_at_random_ep_len: bool = False) -> None:
        """rsl-rl's learning loop; on the cluster's preemption or time-limit signal the run saves a
        checkpoint after the iteration it is in and stops there (policies.preemption)."""
        with self.preemption:
            super().learn(num_learning_iterations, init_at_random_ep_len)

    def end_of_iteration(self) -> None:
        """The logger calls this on every process after each iteration's log, before rsl-rl decides to
        save: the preemption guard's safe point (the update is done, nothing is half-written)."""
        self.preemption.check(self.save_preempted)

    def save_preempted(self) -> Path | None:
        """The checkpoint of the iteration that just ended, where rsl-rl writes its own (rank 0), with the
        logs before it flushed; None on the other processes. A collective under torchrun, like `log`."""
        it = self.current_learning_iteration
        if self.is_distributed:
            self.logger.collect_rank_states(it)  # every process's part, also between save_interval iterations
        if self.logger.writer is None:
            return None
        path = Path(self.logger.log_dir) / f"model_{it}.pt"
        self.save(str(path))
        if isinstance(self.logger.writer, SummaryWriter):
            self.logger.writer.flush()  # rsl-rl never closes TensorBoard's writer, and the process exits next
        else:
            self.logger.stop_logging_writer()
        return path

    def _configure_multi_gpu(self) -> None:
        """rsl-rl's set-up of torchrun's processes (rank, world size, cfg["multi_gpu"] for PPO's
        all-reduce), on CPU and CUDA alike.

        rsl-rl's own starts nccl and insists on cuda:LOCAL_RANK. Here the device must be the one
        `distributed.process_device` gives this process (cpu, or cuda:LOCAL_RANK), and the process
        group (gloo for CPU tensors, nccl for CUDA ones) starts here unless scripts/train.py started it.
        """
        process = distributed.current()
        self.gpu_world_size, self.gpu_global_rank, self.gpu_local_rank = (
            process.world_size,
            process.rank,
            process.local_rank,
        )
        self.is_distributed = process.distributed
        self.cfg["multi_gpu"] = None
        if not process.distributed:
            return
        device = torch.device(self.device)
        expected = distributed.process_device(device.type, process)
        require(
            device == torch.device(expected),
            "device",
            f"{expected} for LOCAL_RANK {process.local_rank} of torchrun's processes",
            repr(self.device),
        )
        distributed.use_device(expected)
        distributed.start(process)
        self.cfg["multi_gpu"] = {
            "global_rank": process.rank,
            "local_rank": process.local_rank,
            "world_size": process.world_size,
        }

    def models(self) -> dict[str, dict]:
        """{name: state dict} of the algorithm's models: what alg.save() holds besides optimisers
        (and counters, such as ExpertDistillation's num_updates)."""
        saved = self.alg.save().items()
        return {key: state for key, state in saved if "optimizer" not in key and isinstance(state, dict)}

    def rank_state(self) -> dict:
        """This process's part of a checkpoint: {"env_state": its environments' state, "rng": its
        generators, "model_digest": `distributed.digest` of its models, which every rank shares}."""
        return {
            "env_state": self.batched_env.state_dict(),
            "rng": rng_state(self.device),
            "model_digest": distributed.digest(self.models()),
        }

    def save(self, path: str, infos: dict | None = None) -> None:
        it = self.current_learning_iteration
        ranks = self.logger.rank_states(it) if self.is_distributed else [self.rank_state()]
        digests = [part["model_digest"] for part in ranks]
        diverged = [rank for rank, value in enumerate(digests) if value != digests[0]]
        if diverged:
            raise RuntimeError(
                f"saving iteration {it}: ranks {diverged} hold other model parameters than rank 0; "
                "the processes diverged, so the checkpoint would not be one policy"
            )
        state = self.alg.save()
        state.update(
            format=checkpoints.FORMAT,
            iter=it,
            infos=infos,
            layout=self.layout,
            env_state=ranks[0]["env_state"],
            rng=ranks[0]["rng"],
            world_size=len(ranks),
            other_ranks=[{"env_state": part["env_state"], "rng": part["rng"]} for part in ranks[1:]],
            model_digests=digests,
            # seconds of collection and learning so far (rsl-rl's count, carried over a resume):
            # the x axis of a learning curve (scripts/learning_curve.py)
            train_time_s=float(self.logger.tot_time),
        )
        checkpoints.atomic_save(state, path)
        self.logger.save_model(path, it)

    def read(self, path: str, map_location: str | None = None) -> dict:
        """The checkpoint at `path`, read as data only, if it fits this runner; InputError naming both
        tasks for a checkpoint of another task, observation layout or network, before any weights are copied."""
        data = checkpoints.load_checkpoint(path, map_location or self.device)
        checkpoints.check_compatible(data, path, self.layout, self.models())
        return data

    def load(
        self, path: str, load_cfg: dict | None = None, strict: bool = True, map_location: str | None = None
    ) -> dict:
        """Restore models and optimiser from a `read` checkpoint (of any number of processes); returns its data."""
        data = self.read(path, map_location)
        self.alg.load(data, load_cfg, strict)
        return data

    def resumable(self, path: str) -> dict:
        """`read(path)` on the CPU if this training can continue it: written by as many processes as
        this one has (each restores its own environments); InputError otherwise."""
        data = self.read(path, "cpu")
        written = data.get("world_size", 1)  # a checkpoint from before torchrun support is a single process's
        if written != self.gpu_world_size:
            how = (
                "a single process (python scripts/train.py)"
                if written == 1
                else f"{written} processes (torchrun --nnodes x --nproc_per_node = {written})"
            )
            raise InputError(
                f"checkpoint {path}: written by a training of {written} process(es), this one has "
                f"{self.gpu_world_size} (WORLD_SIZE): expected {how}, since each process resumes its own environments"
            )
        others = data.get("other_ranks")
        require(
            written == 1 or (isinstance(others, list) and len(others) == written - 1),
            f"checkpoint {path}: other_ranks",
            f"the {written - 1} other processes' environment states and generators",
            type(others).__name__,
        )
        return data

    def resume(self, path: str | os.PathLike) -> int:
        """Continue from checkpoint `path` exactly; returns the next iteration's index.

        Under torchrun rank 0 reads the checkpoint (InputError on every process where it does not fit)
        and hands it to every process, which restores the models, optimiser and its own rank's
        environments and generators.
        """
        data = distributed.from_rank0(lambda: self.resumable(str(path)))
        self.alg.load(data, None, True)
        part = data if self.gpu_global_rank == 0 else data["other_ranks"][self.gpu_global_rank - 1]
        self.batched_env.load_state_dict(part["env_state"])
        set_rng_state(part["rng"], self.device)
        self.current_learning_iteration = data["iter"] + 1
        self.logger.tot_time = data.get("train_time_s", 0.0)  # the run's time goes on where it stopped
        return self.current_learning_iteration
