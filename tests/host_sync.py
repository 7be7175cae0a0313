"""`HostSyncGuard`: makes every operation that reads tensor data back to the host raise.

The Python conversions (.item, .tolist, .numpy, .cpu, bool/int/float/index of a tensor) and the
aten ops whose result or output shape depends on the data (nonzero, masked_select, unique,
boolean-mask indexing, equal, ...). On CPU these are the very calls that synchronise with a GPU,
so running CPU code under the guard proves its CUDA path is sync-free (tests/test_sync_free.py
tests the guard itself and steps every task under it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tests.tasks_helpers import ROOT

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
