"""Errors raised for bad user input: they name the input and what was expected."""


class InputError(ValueError):
    """A user-supplied file, array or setting is invalid.

    The message names the offending input (path, key or argument) and states what was expected,
    so a user can fix it without reading a stack trace from deep inside numpy or torch.
    """


def require(condition: bool, what: str, expected: str, got: object) -> None:
    """Raise `InputError` naming `what`, the `expected` form and what was `got` unless `condition`."""
    if not condition:
        raise InputError(f"{what}: expected {expected}, got {got}")
