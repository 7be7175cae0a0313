"""Errors raised for bad user input: they name the input and what was expected."""

from dataclasses import fields
from typing import Mapping


class InputError(ValueError):
    """A user-supplied file, array or setting is invalid.

    The message names the offending input (path, key or argument) and states what was expected,
    so a user can fix it without reading a stack trace from deep inside numpy or torch.
    """


def require(condition: bool, what: str, expected: str, got: object) -> None:
    """Raise `InputError` naming `what`, the `expected` form and what was `got` unless `condition`."""
    if not condition:
        raise InputError(f"{what}: expected {expected}, got {got}")


def check_keys(cfg: Mapping, cls: type, what: str) -> None:
    """Raise `InputError` naming any key of `cfg` that is not a field of dataclass `cls`."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise InputError(f"{what} keys {unknown} are unknown: expected keys among {sorted(known)}")
