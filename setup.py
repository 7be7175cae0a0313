"""One build step on top of pyproject.toml (which holds all of sonolab's metadata): a wheel (and an
sdist) carries the top-level `conf/` and `assets/` folders as `sim/_data/conf` and `sim/_data/assets`,
where `sim.resources` finds them in an installed sonolab.

Why a build step: setuptools' package data must lie inside a package, and conf/ and assets/ stay
top-level folders of the repository; copying them under a private name inside `sim` keeps any
top-level `conf` or `assets` out of site-packages. An editable install copies nothing: `sim.resources`
reads the checkout's folders in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = {"conf": "sim/_data/conf", "assets": "sim/_data/assets"}  # repository folder -> its place in the wheel


def data_files() -> list[tuple[Path, str]]:
    """(file, its path in the wheel) for every file under the DATA folders, hidden files and caches aside."""
    files = []
    for folder, target in DATA.items():
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT / folder)
            if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in relative.parts):
                files.append((path, f"{target}/{relative.as_posix()}"))
    return files


class BuildPyWithData(build_py):
    """build_py that also copies DATA into the build (not in editable mode, which reads them in place)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for target in DATA.values():  # a build folder left from an earlier build may hold files deleted since
            shutil.rmtree(Path(self.build_lib) / target, ignore_errors=True)
        for source, target in data_files():
            destination = Path(self.build_lib) / target
            self.mkpath(str(destination.parent))
            self.copy_file(str(source), str(destination), preserve_mode=False)

    def get_source_files(self) -> list[str]:
        """The sdist's files: the packages' own and the DATA folders, so a wheel built from the sdist has them too."""
        return [*super().get_source_files(), *(str(source.relative_to(ROOT)) for source, _ in data_files())]


setup(cmdclass={"build_py": BuildPyWithData})
