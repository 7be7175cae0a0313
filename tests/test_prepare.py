"""prepare_patient: load + derive + on-disk cache, and the prepare_patient.py script."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.anatomy import cache
from sim.anatomy.patient import Patient
from sim.anatomy.prepare import PATH_KEYS, normalise_config, prepare, prepare_patient
from sim.errors import InputError

PHANTOM = {"source": "phantom", "seed": 3, "spacing_mm": 4.0}


def assert_same_patient(a: Patient, b: Patient) -> None:
    """Every array and derived value equal, bit for bit."""
    assert (a.name, a.split, a.structure_names) == (b.name, b.split, b.structure_names)
    for field in ("tissue", "structures", "affine", "ct"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    assert (a.skin is None) == (b.skin is None)
    if a.skin is not None:
        assert (a.skin.x0, a.skin.z0, a.skin.dx, a.skin.dz) == (b.skin.x0, b.skin.z0, b.skin.dx, b.skin.dz)
        np.testing.assert_array_equal(a.skin.y, b.skin.y)
        np.testing.assert_array_equal(a.skin.normal, b.skin.normal)
    assert a.landmarks.keys() == b.landmarks.keys()
    for name, lm in a.landmarks.items():
        other = b.landmarks[name]
        np.testing.assert_array_equal(lm.centre, other.centre)
        np.testing.assert_array_equal(lm.axes, other.axes)
        assert lm.planes.keys() == other.planes.keys()
        for view, plane in lm.planes.items():
            for f in ("origin", "normal", "u", "v"):
                np.testing.assert_array_equal(getattr(plane, f), getattr(other.planes[view], f))
    assert a.plans.keys() == b.plans.keys()
    for key, plan in a.plans.items():
        other = b.plans[key]
        for f in dataclasses.fields(plan):
            np.testing.assert_array_equal(getattr(plan, f.name), getattr(other, f.name))
    assert a.meshes.keys() == b.meshes.keys()
    for name, mesh in a.meshes.items():
        np.testing.assert_array_equal(mesh.vertices, b.meshes[name].vertices)
        np.testing.assert_array_equal(mesh.faces, b.meshes[name].faces)


def test_phantom_second_prepare_hits_the_cache(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    cold = prepare(PHANTOM, cache_dir=tmp_path, progress=False)
    t1 = time.perf_counter()
    warm = prepare(PHANTOM, cache_dir=tmp_path, progress=False)
    t2 = time.perf_counter()
    assert not cold.from_cache and warm.from_cache and cold.path == warm.path
    assert sorted(p.name for p in cold.path.iterdir()) == [
        "landmarks.json",
        "meshes.npz",
        "meta.json",
        "plans.json",
        "skin.npz",
        "volumes.npz",
    ]
    assert cold.patient.landmarks and cold.patient.plans and cold.patient.meshes and cold.patient.skin is not None
    assert_same_patient(cold.patient, warm.patient)
    assert t2 - t1 < t1 - t0


def test_real_nifti_prepare_from_omegaconf(real_ct: Path, real_seg: Path, totalseg_dir: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "source": "nifti",
            "ct": str(real_ct),
            "labels": str(real_seg),
            "tissue_types": str(totalseg_dir / "tissue_types"),
            "split": "test",
            "meshes": False,
        }
    )
    cold = prepare(cfg, cache_dir=tmp_path, progress=False)
    warm = prepare_patient(cfg, cache_dir=tmp_path, progress=False)
    assert cold.patient.split == "test" and not cold.patient.meshes
    assert {f"vertebrae_L{i}" for i in range(1, 6)} <= set(cold.patient.landmarks)
    assert_same_patient(cold.patient, warm)


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONOLAB_CACHE", str(tmp_path / "env_cache"))
    result = prepare({**PHANTOM, "meshes": False}, progress=False)
    assert result.path.parent == tmp_path / "env_cache"


def test_key_follows_inputs_not_paths(real_seg: Path, tmp_path: Path) -> None:
    def key(cfg: dict) -> str:
        return cache.cache_key(normalise_config(cfg), PATH_KEYS)

    assert key(PHANTOM) == key(dict(PHANTOM))
    assert key(PHANTOM) != key({**PHANTOM, "seed": 4})
    assert key(PHANTOM) != key({**PHANTOM, "params": {"fat_mm": [20.0, 25.0]}})

    copy = tmp_path / "a" / "seg.nii.gz"
    copy.parent.mkdir()
    shutil.copy(real_seg, copy)
    base = key({"source": "nifti", "labels": str(real_seg)})
    assert key({"source": "nifti", "labels": str(copy)}) == base  # same bytes elsewhere: same key
    img = nib.load(copy)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), copy)
    assert key({"source": "nifti", "labels": str(copy)}) != base  # one voxel changed: new key


def test_half_written_entries_are_never_loaded(tmp_path: Path) -> None:
    key = cache.cache_key(normalise_config(PHANTOM), PATH_KEYS)
    # A writer that died before its rename leaves a temp folder, even one with a meta.json.
    good = prepare(PHANTOM, cache_dir=tmp_path / "ref", progress=False)
    stale = tmp_path / "cache" / f"{cache.TMP_PREFIX}{key}-dead"
    shutil.copytree(good.path, stale)
    np.savez(stale / "volumes.npz", tissue=np.zeros((2, 2, 2), np.uint8))
    assert cache.load_entry(tmp_path / "cache", key) is None
    result = prepare(PHANTOM, cache_dir=tmp_path / "cache", progress=False)
    assert not result.from_cache and result.path.name == key
    assert_same_patient(result.patient, good.patient)


def test_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    first = prepare(PHANTOM, cache_dir=tmp_path, progress=False)
    raw = (first.path / "volumes.npz").read_bytes()
    (first.path / "volumes.npz").write_bytes(raw[: len(raw) // 3])
    again = prepare(PHANTOM, cache_dir=tmp_path, progress=False)
    assert not again.from_cache
    assert_same_patient(first.patient, again.patient)
    assert prepare(PHANTOM, cache_dir=tmp_path, progress=False).from_cache


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"source": "mri"}, r"patient config 'source': expected one of \['dicom', 'nifti', 'phantom'\], got 'mri'"),
        (
            {"source": "phantom", "ct": "x.nii.gz"},
            r"patient config \(source 'phantom'\): expected keys among .* got \['ct'\]",
        ),
        ({"source": "nifti"}, r"expected 'ct', 'labels' or both"),
        ({"source": "nifti", "ct": "/no/such/ct.nii.gz"}, r"ct /no/such/ct\.nii\.gz: file or folder not found"),
        ({**PHANTOM, "split": "val"}, r"'split': expected 'train' or 'test'"),
    ],
)
def test_bad_config(cfg: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=message):
        prepare(cfg, cache_dir=tmp_path, progress=False)


def _script(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(repo_root / "scripts" / "prepare_patient.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo_root)


def test_script_exits_2_on_a_bad_file(repo_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    run = _script(repo_root, str(bad), "--cache-dir", str(tmp_path / "c"), "--quiet")
    assert run.returncode == 2
    assert "broken.nii.gz" in run.stderr and "Traceback" not in run.stderr


def test_script_prints_summary_and_cache_path_last(repo_root: Path, tmp_path: Path) -> None:
    run = _script(
        repo_root, "--phantom", "--seed", "2", "--spacing", "4", "--no-meshes", "--cache-dir", str(tmp_path), "--quiet"
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert Path(lines[-1]).parent == tmp_path and (Path(lines[-1]) / "meta.json").is_file()
    assert any(line.startswith("lumbar:") and "L3" in line for line in lines)
    assert not any(line.startswith("level") for line in lines)  # the plan table only with --plans


def test_script_prints_the_plan_table_before_the_summary(repo_root: Path, tmp_path: Path) -> None:
    run = _script(
        repo_root, "--phantom", "--seed", "2", "--spacing", "4", "--no-meshes", "--plans", "--cache-dir", str(tmp_path)
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    header = lines[0].split()
    assert header[:3] == ["level", "side", "transverse"] and "clearance" in header
    rows = [line.split() for line in lines[1 : lines.index(next(x for x in lines if x.startswith("patient:")))]]
    assert rows and all(row[0] in {"L1", "L2", "L3", "L4", "L5"} and row[1] in {"left", "right"} for row in rows)
    assert len({len(line) for line in lines[: len(rows) + 1]}) == 1  # aligned columns
    assert Path(lines[-1]).parent == tmp_path
