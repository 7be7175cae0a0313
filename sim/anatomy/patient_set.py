"""Patient sets: the train and test patients of a task, as `conf/patient/*.yaml` describe them.

A set is a mapping {common: {...}, train: [entry, ...], test: [entry, ...], held_out: bool}:
each entry is a `prepare_patient` config merged over `common` (for example `{seed: 3}` over a
phantom's common settings); `{seeds: [a, b]}` stands for the entries `{seed: a}` .. `{seed: b - 1}`.
held_out (default true): no test patient may also be a train patient, so a policy's test
figures are on anatomy it has never seen; a set that evaluates on its training patients on
purpose (one real CT) says held_out: false. Relative paths are taken from the current directory.
"""

from __future__ import annotations

import os
from typing import Mapping

from sim.anatomy.patient import Patient
from sim.anatomy.prepare import prepare_patient
from sim.config import to_container
from sim.errors import InputError, require

SPLITS = ("train", "test")


def split_configs(patient_set: Mapping, split: str) -> list[dict]:
    """The `prepare_patient` configs of `split` ("train" or "test") in `patient_set`."""
    patient_set = to_container(patient_set)
    require(
        isinstance(patient_set, Mapping),
        "patient set",
        "a mapping with 'common', 'train' and 'test'",
        type(patient_set).__name__,
    )
    unknown = sorted(set(patient_set) - {"common", "held_out", *SPLITS})
    require(not unknown, "patient set keys", "keys among ['common', 'held_out', 'test', 'train']", unknown)
    require(split in SPLITS, "split", "'train' or 'test'", repr(split))
    held_out = patient_set.get("held_out", True)
    require(isinstance(held_out, bool), "patient set held_out", "true or false", repr(held_out))
    common = dict(patient_set.get("common") or {})
    configs = {s: [{**common, **entry} for entry in _entries(patient_set, s)] for s in SPLITS}
    if held_out:
        shared = [c for c in configs["test"] if c in configs["train"]]
        require(
            not shared,
            "patient set test patients",
            "none that is also a train patient (held_out: false allows it)",
            shared[:1],
        )
    if not configs[split]:
        raise InputError(f"patient set {split!r}: expected at least one patient, got none")
    return [{**c, "split": split} for c in configs[split]]


def _entries(patient_set: Mapping, split: str) -> list[dict]:
    """The entries of `split` (none if it has none), seed ranges expanded."""
    entries = patient_set.get(split) or []
    require(isinstance(entries, list), f"patient set {split!r}", "a list of patient entries", type(entries).__name__)
    out = []
    for entry in entries:
        require(isinstance(entry, Mapping), f"patient set {split!r} entry", "a mapping", repr(entry)[:80])
        entry = dict(entry)
        if "seeds" in entry:
            seeds = entry.pop("seeds")
            ok = isinstance(seeds, list) and len(seeds) == 2 and all(type(v) is int for v in seeds)
            require(ok and seeds[0] < seeds[1], f"patient set {split!r} seeds", "[first, end) integers", seeds)
            require("seed" not in entry, f"patient set {split!r} entry", "seed or seeds, not both", entry)
            out += [{**entry, "seed": seed} for seed in range(*seeds)]
        else:
            out.append(entry)
    return out


def load_patients(
    patient_set: Mapping, split: str, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> list[Patient]:
    """Prepare (or read from the cache) every patient of `split`; see `prepare_patient`."""
    return [prepare_patient(cfg, cache_dir, progress) for cfg in split_configs(patient_set, split)]
