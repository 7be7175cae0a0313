"""Several processes, one training (torchrun): which process this is, its device and seed, and the collectives.

torchrun starts the processes and describes each in environment variables: WORLD_SIZE (processes
in all), RANK (this one: 0 ... WORLD_SIZE - 1), LOCAL_RANK and LOCAL_WORLD_SIZE (the same on this
node). Process RANK steps its own environments (seed + RANK, the training patients
[RANK::WORLD_SIZE]) on cpu or on cuda:LOCAL_RANK, and rsl-rl's PPO keeps one policy: it broadcasts
rank 0's parameters when learning starts and all-reduces the gradients of every mini-batch.

All collectives use the default process group: gloo for CPU tensors and, where CUDA is available,
nccl for CUDA tensors (torch's "cpu:gloo,cuda:nccl"), so objects (run folders, configs, episode
statistics, checkpoint parts) always travel as pickles over gloo with their tensors on the CPU,
whichever device trains. Without torchrun (WORLD_SIZE unset or 1) this is a single process and
nothing here communicates.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
from typing import Callable, Iterator, Mapping, TypeVar

import torch
import torch.distributed as dist

from sim.errors import InputError, require

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Process:
    """One process of a training: its global `rank` of `world_size`, and its `local_rank` of the
    `local_world_size` processes on its node (which GPU it uses)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def seed(self, seed: int) -> int:
        """This process's seed for a run's `seed`: seed + RANK, so no two processes draw the same numbers."""
        return seed + self.rank


def _variable(name: str, default: int | None) -> int:
    """The int in environment variable `name` (`default` where it is unset); InputError naming it otherwise."""
    text = os.environ.get(name)
    if text is None:
        require(default is not None, name, "the variable torchrun sets for each process (start with torchrun)", "unset")
        return default  # type: ignore[return-value]
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name} {text!r}: expected an int (torchrun sets it)") from None


def current() -> Process:
    """This process as torchrun's variables describe it; a single process without them (WORLD_SIZE unset or 1).

    InputError naming the variable for a RANK or LOCAL_RANK out of range or missing when WORLD_SIZE > 1.
    """
    world = _variable("WORLD_SIZE", 1)
    require(world >= 1, "WORLD_SIZE", "an int >= 1 (the number of processes)", world)
    if world == 1:
        return Process()
    rank, local_rank = _variable("RANK", None), _variable("LOCAL_RANK", None)
    require(0 <= rank < world, "RANK", f"an int in [0, WORLD_SIZE) = [0, {world})", rank)
    local_world = _variable("LOCAL_WORLD_SIZE", local_rank + 1)  # unknown without torchrun: at least this many
    require(1 <= local_world <= world, "LOCAL_WORLD_SIZE", f"an int in [1, WORLD_SIZE = {world}]", local_world)
    require(
        0 <= local_rank < local_world, "LOCAL_RANK", f"an int in [0, LOCAL_WORLD_SIZE) = [0, {local_world})", local_rank
    )
    return Process(rank, world, local_rank, local_world)


def process_device(setting: str, process: Process, visible_gpus: int | None = None) -> str:
    """The device `process` trains on for the `device` setting (a checked cpu, cuda or cuda:<index>).

    A single process keeps the setting. Several processes train on cpu, or each on cuda:LOCAL_RANK
    for device=cuda: that needs at least LOCAL_WORLD_SIZE visible GPUs (`visible_gpus`, by default
    torch.cuda.device_count(), which CUDA_VISIBLE_DEVICES narrows), and InputError names the
    process count, LOCAL_RANK and the visible devices where there are fewer.
    """
    device = torch.device(setting)
    if not process.distributed or device.type == "cpu":
        return setting
    require(
        device.type == "cuda" and device.index is None,
        "device",
        f"cpu or cuda with torchrun's {process.world_size} processes (each uses cuda:LOCAL_RANK)",
        repr(setting),
    )
    visible = torch.cuda.device_count() if visible_gpus is None else visible_gpus
    if process.local_world_size > visible:
        narrowed = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = "CUDA_VISIBLE_DEVICES unset" if narrowed is None else f"CUDA_VISIBLE_DEVICES={narrowed!r}"
        raise InputError(
            f"device 'cuda': this node runs LOCAL_WORLD_SIZE={process.local_world_size} processes, LOCAL_RANK "
            f"{process.local_rank} on cuda:{process.local_rank}, but {visible} GPU(s) are visible ({shown}): "
            f"expected at most {visible} processes per node (torchrun --nproc_per_node) and every process "
            "seeing all of its node's GPUs (the same CUDA_VISIBLE_DEVICES for all of them)"
        )
    return f"cuda:{process.local_rank}"


def use_device(device: str) -> None:
    """Make `device`, a cuda:<index>, this process's current CUDA device (nothing for cpu or cuda
    without an index), so that nothing it runs (nccl included) opens a context on another process's GPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)


def backend() -> str:
    """The process group's backend: gloo for CPU tensors, plus nccl for CUDA tensors where CUDA is available."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def start(process: Process) -> bool:
    """Join the process group of `process`'s training (torchrun's rendezvous: MASTER_ADDR, MASTER_PORT)
    unless this process already has one; returns whether it started one."""
    if not process.distributed or dist.is_initialized():
        return False
    dist.init_process_group(backend(), rank=process.rank, world_size=process.world_size)
    return True


@contextlib.contextmanager
def session(process: Process) -> Iterator[None]:
    """The process group of `process`'s training while the block runs (nothing for a single process)."""
    started = start(process)
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def cpu(obj: T) -> T:
    """`obj` with every tensor in its dicts, lists and tuples copied to the CPU (what pickles between devices)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()  # type: ignore[return-value]
    if isinstance(obj, dict):
        out = copy.copy(obj)  # the same dict type with its attributes (a state_dict's _metadata)
        for key, value in obj.items():
            out[key] = cpu(value)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu(value) for value in obj)  # type: ignore[return-value]
    return obj


def from_rank0(fn: Callable[[], T]) -> T:
    """fn() computed by rank 0 alone (it may write files) and handed to every process (a collective).

    An InputError fn raises is raised on every process with the same message, so every process
    reports the bad input; another exception is re-raised on rank 0 and reported as a RuntimeError elsewhere.
    """
    if not dist.is_initialized():
        return fn()
    box: list[object] = [None]
    failure: BaseException | None = None
    if _rank() == 0:
        try:
            box[0] = ("ok", cpu(fn()))
        except InputError as err:
            box[0], failure = ("input", str(err)), err
        except Exception as err:  # any failure must reach the other ranks, or they wait in the broadcast
            box[0], failure = ("failed", f"{type(err).__name__}: {err}"), err
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]  # type: ignore[misc]
    if failure is not None:
        raise failure
    if status == "input":
        raise InputError(value)
    if status == "failed":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value  # type: ignore[return-value]


def gather(obj: object) -> list[object] | None:
    """Every process's `obj` (tensors copied to the CPU), in rank order, on rank 0; None on the others.

    A collective: every process of the group calls it. A single process gets [obj].
    """
    if not dist.is_initialized():
        return [obj]
    parts: list[object] | None = [None] * dist.get_world_size() if _rank() == 0 else None
    dist.gather_object(cpu(obj), parts, dst=0)
    return parts


def digest(models: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 (hex) of models' state dicts {model: {name: tensor}}: their names, dtypes, shapes and
    bytes, so two processes holding the same parameters (and normaliser statistics) agree on it."""
    h = hashlib.sha256()
    for model in sorted(models):
        for name, tensor in models[model].items():
            h.update(f"{model}.{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            h.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
