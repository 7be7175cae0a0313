"""A non-editable install: the wheel built from this checkout carries conf/ and assets/ inside `sim`,
and installed into a fresh virtual environment its `sonolab-train` trains from another folder with
the installed package's files alone.

How the fresh environment gets its dependencies without a download: a .pth file in its
site-packages names the site-packages of the environment running these tests. Python puts a .pth
line's folder on sys.path but reads no .pth file inside it, so the editable install's hook there
(which would make this checkout's packages importable) never runs; PYTHONPATH is cleared. sonolab itself comes
from the wheel alone, installed with `pip --no-deps --no-index`, and the wheel is built without
build isolation (setuptools comes with the dev extra), so no step needs a network. The training
process records every file it opens (an audit hook) and where each sonolab module came from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.tasks_helpers import ROOT, SMALL_RUN

SOURCES = ("sim", "tasks", "policies", "conf", "assets", "pyproject.toml", "setup.py", "README.md")
PACKAGES = ("sim", "tasks", "policies")
CHECKOUT_ONLY = ("sim", "tasks", "policies", "conf", "assets", "scripts")  # the checkout's own files, not its .venv
COMMANDS = ("train", "play", "export", "deploy", "benchmark", "prepare-patient")

# Runs an installed console script in this interpreter and writes what it read to a JSON report.
DRIVER = """
import json, os, runpy, sys
script, report = sys.argv[1], sys.argv[2]
opened = []
def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(audit)
sys.argv = [script, *sys.argv[3:]]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    modules = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n.split(".")[0] in %r}
    with open(report, "w") as f:
        json.dump({"opened": opened, "modules": modules, "sys_path": sys.path}, f)
""" % (PACKAGES,)


def run(cmd: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    """Run cmd; on failure, fail the test with its output."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def data_files(folder: Path) -> set[str]:
    """Files under folder (relative, posix), hidden ones and caches aside: what setup.py puts in the wheel."""
    relative = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return {
        r.as_posix() for r in relative if not any(part.startswith(".") or part == "__pycache__" for part in r.parts)
    }


def site_packages(venv: Path) -> Path:
    (folder,) = (venv / "lib").glob("python3*/site-packages")
    return folder


def is_under(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the checkout's sources (the build writes build/ and egg-info into the copy)."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source, target = ROOT / name, tmp / "src" / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    run([*pip, "--wheel-dir", tmp / "dist", tmp / "src"])
    (built,) = (tmp / "dist").glob("sonolab-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh virtual environment with sonolab installed from the wheel, its dependencies from this one."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages(venv) / "_sonolab_test_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel])
    return venv


def test_the_wheel_holds_the_packages_with_conf_and_assets_inside_sim(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {*PACKAGES, "sonolab-0.1.0.dist-info"}, f"{wheel.name}: expected only the packages, got {top}"
    for folder in ("conf", "assets"):
        packaged = {n.removeprefix(f"sim/_data/{folder}/") for n in names if n.startswith(f"sim/_data/{folder}/")}
        assert packaged == data_files(ROOT / folder), f"{wheel.name}: sim/_data/{folder} differs from {folder}/"
    assert "sim/_data/assets/patients/totalseg_example/LICENSE.TotalSegmentator" in names
    entry_points = zipfile.ZipFile(wheel).read("sonolab-0.1.0.dist-info/entry_points.txt").decode()
    for command in COMMANDS:
        assert f"sonolab-{command} = policies.cli." in entry_points
    assert "[isaaclab.tasks]\nsonolab = tasks" in entry_points


def test_the_installed_sonolab_trains_from_another_folder_with_its_own_files(venv: Path, tmp_path: Path):
    python, purelib = venv / "bin" / "python", site_packages(venv)
    for command in COMMANDS:
        assert (venv / "bin" / f"sonolab-{command}").is_file(), f"the wheel installed no sonolab-{command}"
    installed_before = {p for p in purelib.rglob("*") if "__pycache__" not in p.parts}
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "work").mkdir()
    home = tmp_path / "home"  # the default patient cache: <home>/.cache/sonolab/patients
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SONOLAB_"))}
    env.update(HOME=str(home), PYTHONNOUSERSITE="1")
    overrides = ["task=us_nav_state", "num_envs=4", "agent.max_iterations=1", "agent.num_steps_per_env=4"]
    done = run(
        [python, tmp_path / "driver.py", venv / "bin" / "sonolab-train", tmp_path / "report.json", *overrides]
        + [*SMALL_RUN, f"log_root={tmp_path / 'logs'}"],
        cwd=tmp_path / "work",
        env=env,
        timeout=300,
    )
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert is_under(run_dir, tmp_path / "logs" / "us_nav_state") and list(run_dir.glob("model_*.pt")), done.stdout
    # The run records the installed version, not the git state of the folder the venv happens to sit in.
    assert (run_dir / "git.txt").read_text().startswith("installed sonolab 0.1.0"), (run_dir / "git.txt").read_text()
    report = json.loads((tmp_path / "report.json").read_text())

    # sonolab's code and files came from the installed wheel; nothing of the checkout was on the path or read.
    assert not any(Path(p).resolve() == ROOT for p in report["sys_path"] if p), report["sys_path"]
    outside = {name: path for name, path in report["modules"].items() if path and not is_under(path, purelib)}
    assert not outside, f"sonolab modules imported from outside the installed package: {outside}"
    opened = {Path(p).resolve() for p in report["opened"]}
    read_from_checkout = sorted(str(p) for p in opened if any(is_under(p, ROOT / part) for part in CHECKOUT_ONLY))
    assert not read_from_checkout, f"the installed sonolab read the checkout's files: {read_from_checkout[:5]}"
    data = (purelib / "sim" / "_data").resolve()
    for used in ("conf/config.yaml", "conf/task/us_nav_state.yaml", "conf/anatomy/tissue_map.yaml"):
        assert data / used in opened, f"the training did not read the installed {used}"
    assert any(is_under(p, data / "assets" / "robots") for p in opened), "the training read no installed URDF"

    # The prepared phantoms went to the user's cache folder; nothing was written into site-packages.
    assert list((home / ".cache" / "sonolab" / "patients").glob("*/meta.json"))
    written = {p for p in purelib.rglob("*") if "__pycache__" not in p.parts} - installed_before
    assert not written, f"the training wrote into site-packages: {sorted(written)[:5]}"
