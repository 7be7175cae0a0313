"""Typed configs from plain dicts (Hydra / YAML): nested dataclasses, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

from sim.errors import InputError, check_keys

T = TypeVar("T")


def to_container(cfg: Any) -> Any:
    """Plain Python containers of an OmegaConf config (interpolations resolved); others unchanged."""
    if hasattr(cfg, "_metadata"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build(cls: type[T], cfg: Mapping | T | None, what: str) -> T:
    """An instance of dataclass `cls` from mapping `cfg`; nested dataclass fields are built too.

    Keys not among the fields raise `InputError` naming `what`; missing keys keep their defaults;
    lists become tuples where the field's default is a tuple.
    """
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    cfg = to_container(cfg)
    if not isinstance(cfg, Mapping):
        raise InputError(f"{what}: expected a mapping of settings, got {type(cfg).__name__}")
    check_keys(cfg, cls, what)
    hints = typing.get_type_hints(cls)
    defaults = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in cfg:
            continue
        value, kind = cfg[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind):
            value = build(kind, value, f"{what}.{f.name}")
        elif isinstance(getattr(defaults, f.name), tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}: {err}") from err

