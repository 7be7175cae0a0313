"""Errors raised for bad user input: they name the input and what was expected."""

import math
from dataclasses import fields
from numbers import Integral, Real
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


def require_bool(value: object, what: str) -> bool:
    """`value` if it is true or false; `InputError` naming `what` otherwise."""
    require(isinstance(value, bool), what, "true or false", repr(value))
    return value


def require_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`; `InputError` naming `what` otherwise."""
    require(isinstance(value, str) and value in choices, what, " or ".join(choices), repr(value))
    return value


def require_int(value: object, what: str, minimum: int) -> int:
    """`value` as an int if it is an integer (bool is not) >= `minimum`; `InputError` naming `what` otherwise."""
    require(
        isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum,
        what,
        f"an int >= {minimum}",
        repr(value),
    )
    return int(value)


def require_number(value: object, what: str, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """`value` as a float if it is a finite real (bool is not) in [low, high] ((low, high] when
    `low_open`); `InputError` naming `what` otherwise."""
    finite = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = finite and (value > low if low_open else value >= low) and value <= high
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
    require(ok, what, f"a finite number in {interval}", repr(value))
    return float(value)


def check_keys(cfg: Mapping, cls: type, what: str) -> None:
    """Raise `InputError` naming any key of `cfg` that is not a field of dataclass `cls`."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise InputError(f"{what} keys {unknown} are unknown: expected keys among {sorted(known)}")
