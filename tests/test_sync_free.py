"""Habits: importing the packages changes nothing process-wide, and env.step never waits on the device.

`HostSyncGuard` makes every operation that reads tensor data back to the host raise: the Python
conversions (.item, .tolist, .numpy, .cpu, bool/int/float/index of a tensor) and the aten ops
whose result or output shape depends on the data (nonzero, masked_select, unique, boolean-mask
indexing, equal, ...). On CPU these are the very calls that synchronise with a GPU, so stepping
a CPU environment under the guard proves the CUDA step path is sync-free.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from sim.anatomy.patient_set import load_patients
from tasks import make_env, registry
from tests.tasks_helpers import ROOT, small_patient_set

T = torch.Tensor
# Python-level reads of tensor data (several never reach the dispatcher on CPU).
HOST_READS = {
    T.item: "Tensor.item",
    T.tolist: "Tensor.tolist",
    T.numpy: "Tensor.numpy",
    T.cpu: "Tensor.cpu",
    T.__bool__: "bool(tensor)",
    T.__int__: "int(tensor)",
    T.__float__: "float(tensor)",
    T.__index__: "tensor used as a Python index",
    T.__array__: "numpy conversion",
}
# Tensors made from Python or numpy data: a blocking host-to-device copy (a sync) on CUDA.
FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.from_numpy}
# aten ops that read data on the host or size their output by it.
aten = torch.ops.aten
DATA_DEPENDENT = {
    aten._local_scalar_dense.default,  # every scalar read (item, bool, int, float, comparisons in `if`)
    aten.is_nonzero.default,
    aten.nonzero.default,  # also behind boolean-mask indexing and torch.where(cond)
    aten.nonzero_numpy.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
    aten.equal.default,
    aten.allclose.default,
}
# Indexing ops that turn a boolean mask into indices internally (a nonzero the dispatcher never sees).
MASK_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _is_mask(index: object) -> bool:
    """Whether an index is a boolean (or legacy uint8) mask."""
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


# The one read env.step makes by design, in its own body: which environments ended, to reset them
# (Isaac Lab does the same). Everything it calls, the resets included, stays on the device.
RESET_DECISION = ("sim/envs/base.py", "step")
TORCH_DIR = Path(torch.__file__).parent


class HostSync(AssertionError):
    """A host synchronisation on a path that must be free of them."""


def _caller() -> tuple[str, str, str]:
    """(file, function) of the innermost frame outside torch and this module that made the current
    torch call (file relative to the repository when inside it), and where in the repository that
    call came from ("file:line function" of the innermost repository frame, for the message)."""
    frame, caller, origin = sys._getframe(2), None, ""
    while frame is not None and not origin:
        path = Path(frame.f_code.co_filename)
        if not path.is_relative_to(TORCH_DIR) and path != Path(__file__):
            name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            caller = caller or (name, frame.f_code.co_name)
            if path.is_relative_to(ROOT) and not path.is_relative_to(ROOT / "tests"):
                origin = f"{name}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return (*(caller or ("", "")), origin)


def _raise_unless_allowed(what: str, allowed: set[tuple[str, str]]) -> None:
    file, function, origin = _caller()
    if (file, function) not in allowed:
        raise HostSync(f"host synchronisation: {what} in {file}:{function} (from {origin})")


class _FunctionGuard(TorchFunctionMode):
    def __init__(self, allowed: set[tuple[str, str]]) -> None:
        super().__init__()
        self.allowed = allowed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            _raise_unless_allowed(HOST_READS[func], self.allowed)
        if func in FROM_HOST_DATA and args and not isinstance(args[0], torch.Tensor):
            _raise_unless_allowed(f"{func.__name__} of host data", self.allowed)
        return func(*args, **(kwargs or {}))


class _DispatchGuard(TorchDispatchMode):
    def __init__(self, allowed: set[tuple[str, str]]) -> None:
        super().__init__()
        self.allowed = allowed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in DATA_DEPENDENT:
            _raise_unless_allowed(str(func), self.allowed)
        if func in MASK_INDEXED and any(_is_mask(i) for i in (args[1] if len(args) > 1 else kwargs["indices"])):
            _raise_unless_allowed(f"boolean-mask indexing ({func})", self.allowed)
        return func(*args, **(kwargs or {}))


class HostSyncGuard:
    """Context manager: any host synchronisation raises `HostSync`, except at `allowed`
    (repository file, function) sites."""

    def __init__(self, allowed: set[tuple[str, str]] = frozenset()) -> None:
        self.modes = (_FunctionGuard(set(allowed)), _DispatchGuard(set(allowed)))

    def __enter__(self) -> HostSyncGuard:
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


# -- the guard catches what it claims to


ONE, REPEATS = torch.tensor(1.0), torch.tensor([1, 2, 1])  # made outside the guard


@pytest.mark.parametrize(
    "op, what",
    [
        (lambda x: x.sum().item(), "Tensor.item"),
        (lambda x: x.tolist(), "Tensor.tolist"),
        (lambda x: x.numpy(), "Tensor.numpy"),
        (lambda x: x.cpu(), "Tensor.cpu"),
        (lambda x: bool(x.any()), "bool"),
        (lambda x: (x > 0.5).all() or None, "bool"),
        (lambda x: int(x[0]), "int"),
        (lambda x: float(x.max()), "float"),
        (lambda x: [0, 1, 2][x[0].long()], "Python index"),
        (lambda x: x[x > 0.5], "boolean-mask"),
        (lambda x: x.index_put_((x > 0.5,), ONE), "boolean-mask"),
        (lambda x: x.nonzero(), "nonzero"),
        (lambda x: torch.where(x > 0.5), "nonzero"),
        (lambda x: x.unique(), "unique"),
        (lambda x: torch.masked_select(x, x > 0.5), "masked_select"),
        (lambda x: torch.equal(x, x), "equal"),
        (lambda x: torch.allclose(x, x), "allclose|_local_scalar_dense"),
        (lambda x: x.repeat_interleave(REPEATS), "repeat_interleave"),
        (lambda x: x + torch.tensor([0.1, 0.2, 0.3]), "tensor of host data"),
        (lambda x: x * torch.as_tensor(2.0), "as_tensor of host data"),
    ],
)
def test_guard_catches_every_kind_of_host_read(op, what):
    x = torch.tensor([0.2, 0.7, 0.9])
    with pytest.raises(HostSync, match=what):
        with HostSyncGuard():
            op(x)


def test_guard_lets_device_side_work_through():
    x, index = torch.tensor([0.2, 0.7, 0.9]), torch.tensor([2, 0])
    with HostSyncGuard():
        y = torch.where(x > 0.5, x, 0.0).cumsum(0)[index] + x.shape[0] + len(x) + torch.eye(3)[1].sum()
    assert y.tolist() == pytest.approx([8.6, 7.0])


# -- the step path of every registered task


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


# Every registered task and variant as registered, plus us_nav's per-episode imaging randomisation.
VARIANTS = {name: {"name": name} for name in registry.names()}
VARIANTS["us_nav_randomized"] = {"name": "us_nav", "observation": {"image_size": 16, "randomize_imaging": True}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_step_and_resets_are_sync_free(patients, variant):
    """Steps with zero, NaN, huge and random actions; the first step ends half the episodes and
    the last ends all of them, so partial and full resets run under the guard too."""
    env = make_env(VARIANTS[variant], patients, 4, seed=0)
    n, a = env.num_envs, env.num_actions
    env.max_episode_length = 3
    env.keep_final_obs = True
    g = torch.Generator().manual_seed(0)
    actions = [torch.zeros(n, a), torch.full((n, a), torch.nan), torch.full((n, a), 1e9)]
    actions += [2 * torch.rand(n, a, generator=g) - 1 for _ in range(4)]
    env.episode_length_buf[: n // 2] = env.max_episode_length - 1
    dones = []
    with HostSyncGuard(allowed={RESET_DECISION}):
        for i, action in enumerate(actions):
            if i == len(actions) - 1:
                env.episode_length_buf.fill_(env.max_episode_length - 1)
            obs, reward, terminated, truncated, _ = env.step(action)
            dones.append(terminated | truncated)
    ends = torch.stack(dones).sum(1)
    assert ends[0] == n // 2 and ends[-1] == n
    assert all(torch.isfinite(v).all() for v in obs.values()) and torch.isfinite(reward).all()


def test_reset_decision_is_the_only_read(patients):
    """Without the allowance, the one read the guard stops is BatchedEnv.step's reset decision."""
    env = make_env(VARIANTS["us_nav_state"], patients, 2, seed=0)
    site = r"aten.nonzero.default in sim/envs/base.py:step \(from sim/envs/base.py:\d+ step\)"
    with pytest.raises(HostSync, match=site):
        with HostSyncGuard():
            env.step(torch.zeros(2, 5))


# -- imports have no process-wide side effects

IMPORT_PROBE = """
import json
import torch
import torch._inductor.config as inductor


def settings():
    return {
        "inductor.assert_indirect_indexing": inductor.assert_indirect_indexing,
        "threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "grad": torch.is_grad_enabled(),
    }


report = {"default": settings()}
import sim, tasks, policies, sim.memory
from sim.anatomy.bank import PatientBank
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from tests.slabs import slab_patient
report.update(imported=settings(), kept_on_import=sim.memory.freed_memory_kept())
bank = PatientBank([slab_patient([("skin", 2), ("fat", 10), ("muscle", 20)], 20, 0.002)])
Renderer(bank, ProbeSpec.preset("linear"), config=RendererConfig(compile=True))
report.update(built=settings(), kept_by_renderer=sim.memory.freed_memory_kept())
print(json.dumps(report))
"""


def test_importing_the_packages_changes_nothing_process_wide():
    """Imports leave torch's settings (inductor's config included) and glibc's allocator alone;
    building a compiled renderer tunes the allocator (documented, sim.memory), nothing else."""
    probe = [sys.executable, "-c", IMPORT_PROBE]
    out = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["default"]["inductor.assert_indirect_indexing"] is True
    assert report["imported"] == report["default"] and report["built"] == report["default"]
    assert report["kept_on_import"] is False
    assert report["kept_by_renderer"] is (platform.libc_ver()[0] == "glibc")  # a no-op elsewhere
