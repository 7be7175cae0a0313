"""Patient sets: the train and test patients of a task, as `conf/patient/*.yaml` describe them.

A set is a mapping {common: {...}, train: [entry, ...], test: [entry, ...]}: each entry is a
`prepare_patient` config merged over `common` (for example `{seed: 3}` over a phantom's common
settings). Relative paths are taken from the current directory.
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
    unknown = sorted(set(patient_set) - {"common", *SPLITS})
    require(not unknown, "patient set keys", "keys among ['common', 'test', 'train']", unknown)
    require(split in SPLITS, "split", "'train' or 'test'", repr(split))
    entries = patient_set.get(split) or []
    require(isinstance(entries, list), f"patient set {split!r}", "a list of patient entries", type(entries).__name__)
    if not entries:
        raise InputError(f"patient set {split!r}: expected at least one patient, got none")
    common = dict(patient_set.get("common") or {})
    return [{**common, **dict(entry), "split": split} for entry in entries]


def load_patients(
    patient_set: Mapping, split: str, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> list[Patient]:
    """Prepare (or read from the cache) every patient of `split`; see `prepare_patient`."""
    return [prepare_patient(cfg, cache_dir, progress) for cfg in split_configs(patient_set, split)]
