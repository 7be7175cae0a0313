"""On-disk cache of prepared patients, keyed by a hash of everything that shaped them.

Layout of one entry, `<cache_dir>/<key>/` (key: 32 hex digits of a SHA-256):

    meta.json       format version, key, name, split, structure_names, the config, creation time,
                    files (the names of the other files, so that a missing one is noticed)
    volumes.npz     tissue (I, J, K) uint8, structures (I, J, K) uint8, affine (4, 4) float64 metres,
                    ct (I, J, K) float32 HU when present; uncompressed so a hit is a plain read
    skin.npz        x0, z0, dx, dz (scalars, metres), y (A, B), normal (A, B, 3)   [if derived]
    landmarks.json  vertebra -> centre, axes, planes (origin, normal, u, v), metres  [if derived]
    plans.json      "vertebrae_Lx/side" -> the `ScrewPlan`'s fields (metres, degrees)  [if any planned]
    meshes.npz      "<name>/vertices" (V, 3) float64 metres, "<name>/faces" (F, 3)  [if derived]

No pickle: arrays go to .npz (loaded with allow_pickle=False), the rest to JSON (floats round-trip
exactly). An entry is written into `<cache_dir>/.tmp-<key>-<random>/` and renamed into place in
one step, so a reader sees a complete entry or none; leftover `.tmp-*` folders are never read.
An entry that lost a file or cannot be read is removed with a warning and rebuilt.

The key depends on content, not on file names: a patient read from the cache takes the name of
the current call (see `sim.anatomy.prepare`).

The key hashes: the cache format version, the source code and tables of `sim/anatomy` and
`conf/anatomy` (a code change invalidates old entries), the config, and the input files. Files up
to `HASH_BYTES_LIMIT` are hashed by content, so moving or touching them keeps the key; larger
ones by (resolved path, size, mtime) so that a multi-gigabyte CT is not read twice per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import trimesh

from sim.anatomy.patient import Patient, Plane, SkinSurface, VertebraLandmarks
from sim.anatomy.plans import ScrewPlan
from sim.errors import InputError
from sim.resources import conf_dir

CACHE_FORMAT = 3  # 2: meta.json lists the entry's files; 3: plans.json
CACHE_ENV = "SONOLAB_CACHE"
HASH_BYTES_LIMIT = 1 << 30
TMP_PREFIX = ".tmp-"
# What turns inputs into a patient: the same files, so the same hash, in a checkout and in a wheel built from it.
_CODE_GLOBS = ((Path(__file__).resolve().parent, "*.py"), (conf_dir() / "anatomy", "*.yaml"))


def default_cache_dir() -> Path:
    """$SONOLAB_CACHE, else ~/.cache/sonolab/patients."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sonolab" / "patients"


def code_version() -> str:
    """SHA-256 over the anatomy code and tables that turn inputs into a patient."""
    h = hashlib.sha256()
    for folder, pattern in _CODE_GLOBS:
        for p in sorted(folder.glob(pattern)):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def file_fingerprint(path: Path) -> dict:
    """Content hash of a file, or (path, size, mtime) above `HASH_BYTES_LIMIT` bytes."""
    stat = path.stat()
    if stat.st_size > HASH_BYTES_LIMIT:
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with path.open("rb") as f:
        return {"sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def path_fingerprint(path: str | os.PathLike, what: str) -> dict:
    """Fingerprint of an input file, or of every file in a folder (by relative name)."""
    p = Path(path).expanduser()
    if p.is_file():
        return file_fingerprint(p)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return {"files": {str(f.relative_to(p)): file_fingerprint(f) for f in files}}
    raise InputError(f"{what} {p}: file or folder not found")


def cache_key(cfg: dict, path_keys: tuple[str, ...]) -> str:
    """Key of a normalised config: values under `path_keys` are replaced by their fingerprints."""
    inputs = {
        k: path_fingerprint(v, k) if k in path_keys and isinstance(v, (str, os.PathLike)) else v for k, v in cfg.items()
    }
    blob = json.dumps({"format": CACHE_FORMAT, "code": code_version(), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def entry_dir(cache_dir: Path, key: str) -> Path:
    """Folder of the cache entry for `key`."""
    return Path(cache_dir) / key


def load_entry(cache_dir: Path, key: str) -> Patient | None:
    """The cached patient for `key`, or None when there is no complete entry.

    An entry that exists but is incomplete (a file deleted) or cannot be read (a disk error, an
    edited file) is removed with a warning and None returned, so the caller rebuilds it.
    """
    entry = entry_dir(cache_dir, key)
    if not entry.is_dir():
        return None
    meta_path = entry / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise ValueError(f"format/key mismatch in {meta_path}")
        missing = [name for name in meta["files"] if not (entry / name).is_file()]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)}")
        return _read_patient(entry, meta)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, InputError) as e:
        warnings.warn(f"patient cache entry {entry} is incomplete or unreadable ({e}); rebuilding it", stacklevel=2)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def save_entry(patient: Patient, cache_dir: Path, key: str, cfg: dict) -> Path:
    """Write `patient` atomically as the entry for `key`; returns the entry folder.

    If another process completed the same entry meanwhile, its copy is kept.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = entry_dir(cache_dir, key)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key}-", dir=cache_dir))
    try:
        _write_patient(patient, tmp)
        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "name": patient.name,
            "split": patient.split,
            "structure_names": patient.structure_names,
            "config": cfg,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": sorted(p.name for p in tmp.iterdir()),
        }
        # meta.json last: inside the temp folder too, a complete meta means complete arrays.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_patient(patient: Patient, folder: Path) -> None:
    """Arrays and derived data of `patient` into `folder` (see the module docstring)."""
    volumes = {"tissue": patient.tissue, "structures": patient.structures, "affine": patient.affine}
    if patient.ct is not None:
        volumes["ct"] = patient.ct
    np.savez(folder / "volumes.npz", **volumes)
    if patient.skin is not None:
        s = patient.skin
        np.savez(folder / "skin.npz", x0=s.x0, z0=s.z0, dx=s.dx, dz=s.dz, y=s.y, normal=s.normal)
    if patient.landmarks:
        (folder / "landmarks.json").write_text(
            json.dumps({k: _landmarks_to_json(v) for k, v in patient.landmarks.items()})
        )
    if patient.plans:
        (folder / "plans.json").write_text(json.dumps({k: _plan_to_json(v) for k, v in patient.plans.items()}))
    if patient.meshes:
        arrays = {}
        for name, mesh in patient.meshes.items():
            arrays[f"{name}/vertices"] = np.asarray(mesh.vertices)
            arrays[f"{name}/faces"] = np.asarray(mesh.faces)
        np.savez(folder / "meshes.npz", **arrays)


def _read_patient(folder: Path, meta: dict) -> Patient:
    """Inverse of `_write_patient`."""
    with np.load(folder / "volumes.npz", allow_pickle=False) as v:
        patient = Patient(
            name=meta["name"],
            tissue=v["tissue"],
            structures=v["structures"],
            structure_names={str(k): int(i) for k, i in meta["structure_names"].items()},
            affine=v["affine"],
            ct=v["ct"] if "ct" in v.files else None,
            split=meta["split"],
        )
    if (folder / "skin.npz").is_file():
        with np.load(folder / "skin.npz", allow_pickle=False) as s:
            patient.skin = SkinSurface(
                float(s["x0"]), float(s["z0"]), float(s["dx"]), float(s["dz"]), s["y"], s["normal"]
            )
    if (folder / "landmarks.json").is_file():
        raw = json.loads((folder / "landmarks.json").read_text())
        patient.landmarks = {k: _landmarks_from_json(v) for k, v in raw.items()}
    if (folder / "plans.json").is_file():
        raw = json.loads((folder / "plans.json").read_text())
        patient.plans = {k: _plan_from_json(v) for k, v in raw.items()}
    if (folder / "meshes.npz").is_file():
        with np.load(folder / "meshes.npz", allow_pickle=False) as m:
            names = sorted({k.rsplit("/", 1)[0] for k in m.files})
            patient.meshes = {n: trimesh.Trimesh(m[f"{n}/vertices"], m[f"{n}/faces"], process=False) for n in names}
    return patient


def _landmarks_to_json(lm: VertebraLandmarks) -> dict:
    planes = {
        view: {f: getattr(p, f).tolist() for f in ("origin", "normal", "u", "v")} for view, p in lm.planes.items()
    }
    return {"name": lm.name, "centre": lm.centre.tolist(), "axes": lm.axes.tolist(), "planes": planes}


def _landmarks_from_json(d: dict) -> VertebraLandmarks:
    planes = {view: Plane(**{f: np.array(v) for f, v in p.items()}) for view, p in d["planes"].items()}
    return VertebraLandmarks(d["name"], np.array(d["centre"]), np.array(d["axes"]), planes)


_PLAN_ARRAYS = ("entry", "target")


def _plan_to_json(plan: ScrewPlan) -> dict:
    out = {}
    for f in fields(plan):
        value = getattr(plan, f.name)
        out[f.name] = value.tolist() if f.name in _PLAN_ARRAYS else value
    return out


def _plan_from_json(d: dict) -> ScrewPlan:
    values = {f.name: d[f.name] for f in fields(ScrewPlan)}
    return ScrewPlan(**{k: np.array(v, dtype=np.float64) if k in _PLAN_ARRAYS else v for k, v in values.items()})
