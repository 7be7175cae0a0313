"""Behaviour cloning of a diffusion policy from demonstrations: epochs, EMA, checkpoints, exact resume.

One iteration is one epoch: every training frame of the dataset once, in an order drawn from the
run's own generator, in mini-batches of `batch_size`, with AdamW and a cosine learning rate after
a linear warm-up. An exponential moving average of the weights (decay rising to `ema_decay` as
(1 + k) / (10 + k) after k updates, as in diffusion_policy's EMA) is the policy that is evaluated
and exported. A checkpoint (atomic, `policies.checkpoints`) holds the network and its EMA, the
optimiser, the epoch and every generator, so a resumed run continues bit for bit on the CPU.
Per epoch the loss, learning rate and time go to TensorBoard (or wandb with logger=wandb).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from policies import checkpoints
from policies.diffusion.data import Demonstrations
from policies.diffusion.networks import DiffusionPolicyNet
from policies.preemption import PreemptionGuard
from policies.runner import rng_state, set_rng_state

MODEL, EMA, OPTIMIZER = "model_state_dict", "ema_state_dict", "optimizer_state_dict"


def ema_update(ema: DiffusionPolicyNet, model: DiffusionPolicyNet, updates: int, max_decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, decay = min(max_decay, (1 + k) / (10 + k)) after k updates;
    buffers (the normaliser's statistics) are copied."""
    decay = min(max_decay, (1.0 + updates) / (10.0 + updates))
    with torch.no_grad():
        for mine, theirs in zip(ema.parameters(), model.parameters()):
            mine.lerp_(theirs, 1.0 - decay)
        for mine, theirs in zip(ema.buffers(), model.buffers()):
            mine.copy_(theirs)


def learning_rate(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor of optimiser step `step` of `total`: linear warm-up over `warmup`
    steps, then a cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class Logger:
    """Per-epoch scalars to TensorBoard (run_dir) or wandb (logger=wandb; WANDB_MODE=offline works offline)."""

    def __init__(self, kind: str, run_dir: Path, config: dict) -> None:
        self.kind = kind
        if kind == "wandb":
            import wandb

            self.run = wandb.init(project="sonolab", dir=str(run_dir), name=run_dir.name, config=config, resume="allow")
        else:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def log(self, values: dict[str, float], epoch: int) -> None:
        if self.kind == "wandb":
            self.run.log(values, step=epoch)
        else:
            for key, value in values.items():
                self.writer.add_scalar(key, value, epoch)

    def close(self) -> None:
        if self.kind == "wandb":
            self.run.finish()
        else:
            self.writer.close()


class Trainer:
    """Trains `model` on `demos` in run_dir under the agent settings `agent` (module docstring)."""

    def __init__(
        self, model: DiffusionPolicyNet, demos: Demonstrations, agent: DictConfig, device: str, extra: dict
    ) -> None:
        self.model, self.demos, self.device, self.extra = model.to(device), demos, device, extra
        self.ema = DiffusionPolicyNet(model.config).to(device)
        self.ema.load_state_dict(model.state_dict())
        self.ema.requires_grad_(False)
        self.batch_size = min(int(agent.batch_size), len(demos))
        self.batches = len(demos) // self.batch_size  # full batches only: every step sees batch_size samples
        self.epochs, self.save_interval = int(agent.max_iterations), int(agent.save_interval)
        self.max_decay, self.warmup = float(agent.ema_decay), int(agent.warmup_steps)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=float(agent.learning_rate), weight_decay=float(agent.weight_decay)
        )
        self.base_lr = float(agent.learning_rate)
        self.order = torch.Generator().manual_seed(int(extra["seed"]))  # the epochs' sample order
        self.epoch = 0  # epochs done
        self.updates = 0

    def save(self, run_dir: Path) -> Path:
        """model_<epoch>.pt, atomically."""
        return checkpoints.atomic_save(
            {
                "format": checkpoints.FORMAT,
                "iter": self.epoch,
                "updates": self.updates,
                MODEL: self.model.state_dict(),
                EMA: self.ema.state_dict(),
                OPTIMIZER: self.optimizer.state_dict(),
                "order": self.order.get_state(),
                "rng": rng_state(self.device),
                "net_config": self.model.config,
                **self.extra,
            },
            run_dir / f"model_{self.epoch}.pt",
        )

    def restore(self, data: dict) -> None:
        """Continue from checkpoint `data` (already checked against this run's layout)."""
        self.model.load_state_dict(data[MODEL])
        self.ema.load_state_dict(data[EMA])
        self.optimizer.load_state_dict(data[OPTIMIZER])
        self.order.set_state(data["order"])
        set_rng_state(data["rng"], self.device)
        self.epoch, self.updates = int(data["iter"]), int(data["updates"])

    def run_epoch(self) -> float:
        """One pass over the demonstrations; returns the mean loss."""
        total_steps = self.epochs * self.batches
        order = torch.randperm(len(self.demos), generator=self.order)
        losses = torch.zeros((), device=self.device)
        self.model.train()
        for b in range(self.batches):
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * learning_rate(self.updates, total_steps, self.warmup)
            state, images, actions = self.demos.batch(
                order[b * self.batch_size : (b + 1) * self.batch_size], self.device
            )
            loss = self.model.loss(state, images, actions)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            ema_update(self.ema, self.model, self.updates, self.max_decay)
            self.updates += 1
            losses += loss.detach()
        return float(losses) / self.batches  # one host read per epoch

    def train(self, run_dir: Path, logger_kind: str) -> None:
        """Epochs from self.epoch to the last, a checkpoint every save_interval and at the end."""
        logger = Logger(logger_kind, run_dir, {"agent": self.extra["agent"]})
        try:
            with PreemptionGuard() as guard:
                while self.epoch < self.epochs:
                    start = time.perf_counter()
                    loss = self.run_epoch()
                    self.epoch += 1
                    seconds = time.perf_counter() - start
                    lr = self.optimizer.param_groups[0]["lr"]
                    logger.log(
                        {"Loss/denoising": loss, "Loss/learning_rate": lr, "Perf/epoch_time_s": seconds}, self.epoch
                    )
                    print(
                        f"[sonolab] diffusion epoch {self.epoch}/{self.epochs}: loss {loss:.4f}, {seconds:.1f} s",
                        flush=True,
                    )
                    if self.epoch % self.save_interval == 0 or self.epoch == self.epochs:
                        self.save(run_dir)
                    guard.check(lambda: self.save(run_dir))
        finally:
            logger.close()
