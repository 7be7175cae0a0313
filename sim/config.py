"""Typed configs from plain dicts (Hydra / YAML): nested dataclasses, unknown keys rejected.

The dataclasses are the one source of defaults: `build` fills what a mapping leaves out from
them, and `schema` turns one into a Hydra structured-config node that conf/ YAML files start
from (`defaults: [<schema name>, _self_]`), so a YAML file lists only what differs and the
command line can still override every field (`task.success.position_m=0.003`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

from sim.errors import InputError, check_keys, require

T = TypeVar("T")


def to_container(cfg: Any) -> Any:
    """Plain Python containers of an OmegaConf config (interpolations resolved); others unchanged."""
    if hasattr(cfg, "_metadata"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def check_fields(cls: type, cfg: Mapping, what: str) -> None:
    """InputError naming `what` unless `cfg` has only fields of dataclass `cls` and every field without a default."""
    check_keys(cfg, cls, what)
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in cfg]
    require(not missing, what, f"the keys {names}", f"{sorted(cfg)} (missing {missing})")


def build(cls: type[T], cfg: Mapping | T | None, what: str) -> T:
    """An instance of dataclass `cls` from mapping `cfg`; nested dataclass fields are built too.

    Keys not among the fields, and missing fields that have no default, raise `InputError` naming
    `what`; missing keys keep their defaults; lists become tuples where the field is a tuple. An
    InputError of the class's own checks (`__post_init__`, which name the setting) passes unchanged.
    """
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    cfg = to_container(cfg)
    require(isinstance(cfg, Mapping), what, "a mapping of settings", type(cfg).__name__)
    check_fields(cls, cfg, what)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in cfg:
            continue
        value, kind = cfg[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind):
            value = build(kind, value, f"{what}.{f.name}")
        elif typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}: {err}") from err


def schema(cls: type, overrides: Mapping | None = None) -> Any:
    """A Hydra structured-config node (an OmegaConf DictConfig) of dataclass `cls`'s defaults with
    `overrides` (a nested mapping, which may add keys, e.g. a backend's name) merged over them.

    Typed, so command-line values are converted and checked against the field types while Hydra
    composes; writable, because a frozen dataclass gives a read-only node that no YAML file could
    override; open to new keys (`+task.colour=red`), so those reach `build`, which refuses them by
    name with an InputError as it refuses any other mapping's.
    """
    from omegaconf import OmegaConf

    node = OmegaConf.structured(cls)
    OmegaConf.set_readonly(node, False)
    OmegaConf.set_struct(node, False)
    node.merge_with(overrides or {})
    return node


def store_schemas(schemas: Mapping[str, Mapping[str, Any]]) -> None:
    """Store schema nodes in Hydra's ConfigStore, {group: {name: node}}: conf/<group>/*.yaml files
    then start from one with `defaults: [<name>, _self_]`. Storing a name again replaces it."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, nodes in schemas.items():
        for name, node in nodes.items():
            store.store(group=group, name=name, node=node)
