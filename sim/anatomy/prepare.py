"""`prepare_patient`: load a patient from a config, derive its surfaces and landmarks, cache it.

Config keys (a dict or an OmegaConf DictConfig such as Hydra's `patient` group):

    source: "phantom" | "nifti" | "dicom"
    phantom: seed, spacing_mm, params (dict of PhantomParams overrides)
    nifti:   ct, labels, tissue_types, body, class_map, spacing_mm, max_bytes
    dicom:   series_dir, series (a file name, when the folder holds several series), labels,
             tissue_types, body, class_map, spacing_mm, max_bytes
    any:     name, split ("train" | "test"), meshes (bool, default true)

See `sim.anatomy.cache` for the cache key and layout. The key depends on the inputs' content, so
a patient read from the cache is renamed after this call's inputs (two identical files under
different names share one entry but keep their own names).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from sim.anatomy import cache
from sim.anatomy.derive import derive
from sim.anatomy.loaders import default_name, load_dicom, load_nifti
from sim.anatomy.patient import Patient
from sim.anatomy.phantom import PhantomParams, make_phantom
from sim.config import to_container
from sim.errors import InputError, require

COMMON_KEYS = frozenset({"source", "name", "split", "meshes"})
LOADER_KEYS = frozenset({"labels", "tissue_types", "body", "class_map", "spacing_mm", "max_bytes"})
SOURCE_KEYS = {
    "phantom": frozenset({"seed", "spacing_mm", "params"}),
    "nifti": LOADER_KEYS | {"ct"},
    "dicom": LOADER_KEYS | {"series_dir", "series"},
}
PATH_KEYS = ("ct", "series_dir", "labels", "tissue_types", "body", "class_map")


@dataclass
class Prepared:
    """A prepared patient, the cache entry holding it, and whether it came from the cache."""

    patient: Patient
    path: Path
    from_cache: bool


def normalise_config(cfg: Mapping) -> dict:
    """A plain dict of `cfg` with its keys checked against its source; paths made absolute."""
    cfg = to_container(cfg)  # OmegaConf containers: interpolations resolved
    require(isinstance(cfg, Mapping), "patient config", "a mapping", type(cfg).__name__)
    cfg = {k: v for k, v in dict(cfg).items() if v is not None}
    source = cfg.get("source")
    require(source in SOURCE_KEYS, "patient config 'source'", f"one of {sorted(SOURCE_KEYS)}", repr(source))
    unknown = sorted(set(cfg) - COMMON_KEYS - SOURCE_KEYS[source])
    allowed = sorted(COMMON_KEYS | SOURCE_KEYS[source])
    require(not unknown, f"patient config (source {source!r})", f"keys among {allowed}", unknown)
    require(
        cfg.get("split", "train") in ("train", "test"),
        "patient config 'split'",
        "'train' or 'test'",
        repr(cfg.get("split")),
    )
    if source == "nifti" and "ct" not in cfg and "labels" not in cfg:
        raise InputError("patient config (source 'nifti'): expected 'ct', 'labels' or both")
    require(source != "dicom" or "series_dir" in cfg, "patient config (source 'dicom')", "a 'series_dir'", "none")
    for key in PATH_KEYS:
        if isinstance(cfg.get(key), (str, os.PathLike)):
            cfg[key] = str(Path(cfg[key]).expanduser().resolve())
    return cfg


def prepare(cfg: Mapping, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Prepared:
    """Load, derive and cache the patient described by `cfg`, or read it from the cache.

    cache_dir: default $SONOLAB_CACHE or ~/.cache/sonolab/patients. progress: show a tqdm bar on
    stderr. Raises `InputError` for bad config or input files.
    """
    cfg = normalise_config(cfg)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    with tqdm(total=4, desc="patient", unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("hashing inputs")
        key = cache.cache_key(cfg, PATH_KEYS)
        bar.update()
        bar.set_postfix_str("reading cache")
        patient = cache.load_entry(cache_dir, key)
        if patient is not None:
            patient.name = _input_name(cfg) or patient.name
            bar.update(3)
            return Prepared(patient, cache.entry_dir(cache_dir, key), from_cache=True)
        bar.set_postfix_str(f"loading {cfg['source']}")
        patient = _load(cfg)
        patient.split = cfg.get("split", "train")
        bar.update()
        bar.set_postfix_str("deriving surfaces, landmarks, meshes")
        patient = derive(patient, meshes=bool(cfg.get("meshes", True)))
        bar.update()
        bar.set_postfix_str("writing cache")
        path = cache.save_entry(patient, cache_dir, key, cfg)
        bar.update()
    return Prepared(patient, path, from_cache=False)


def prepare_patient(cfg: Mapping, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Patient:
    """The patient described by `cfg`, built once and then read from the on-disk cache (see `prepare`)."""
    return prepare(cfg, cache_dir, progress).patient


def _load(cfg: dict) -> Patient:
    """Run the loader of `cfg['source']`."""
    loader_args = {k: cfg[k] for k in LOADER_KEYS if k in cfg}
    if cfg["source"] == "phantom":
        params = cfg.get("params")
        require(
            params is None or isinstance(params, Mapping), "patient config 'params'", "a mapping", type(params).__name__
        )
        return make_phantom(
            seed=cfg.get("seed", 0),
            spacing_mm=cfg.get("spacing_mm", 1.0),
            params=PhantomParams.from_dict(params),
            name=cfg.get("name"),
        )
    if cfg["source"] == "nifti":
        return load_nifti(cfg.get("ct"), cfg.get("labels"), name=cfg.get("name"), **_without(loader_args, "labels"))
    return load_dicom(cfg["series_dir"], name=cfg.get("name"), series=cfg.get("series"), **loader_args)


def _input_name(cfg: dict) -> str | None:
    """The name the loader gives the patient of `cfg`; None for an unnamed phantom (its name follows its seed,
    part of the key)."""
    if "name" in cfg or cfg["source"] == "phantom":
        return cfg.get("name")
    return (
        default_name(cfg.get("ct"), cfg.get("labels")) if cfg["source"] == "nifti" else default_name(cfg["series_dir"])
    )


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}
