"""Where sonolab's own files are: its Hydra configs (`conf/`) and assets (`assets/`: robot URDFs,
the example CT with its licence).

In the source tree they are the top-level folders beside sim/, tasks/ and policies/ (an editable
install, or a checkout on PYTHONPATH). A wheel carries copies inside the sim package, in
`sim/_data/conf` and `sim/_data/assets` (setup.py's build step puts them there), so an installed
sonolab reads nothing from the folder it was built from and puts no top-level `conf` or `assets`
into site-packages. Code that reads these files asks `conf_dir()` or `assets_dir()` instead of
counting parent folders. Nothing derived is written here: prepared patients go to the user's
cache folder (`sim.anatomy.cache.default_cache_dir`).
"""

from __future__ import annotations

from pathlib import Path

from sim.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_DATA = PACKAGE_DIR / "_data"  # in a wheel: conf/ and assets/, copied by setup.py's build_py
ASSET_RESOLVER = "sonolab.asset"  # ${sonolab.asset:patients/...} in conf/ (register_resolvers)


def checkout_dir() -> Path | None:
    """The source checkout sim is imported from (the folder with pyproject.toml and conf/ beside
    sim/), or None where sim is installed from a wheel."""
    root = PACKAGE_DIR.parent
    # Both marks: site-packages may hold some other project's top-level `conf` folder, never our pyproject.toml.
    if (root / "pyproject.toml").is_file() and (root / "conf" / "config.yaml").is_file():
        return root
    return None


def _data_dir(name: str) -> Path:
    """The checkout's top-level folder `name`, else the installed package's copy of it."""
    root = checkout_dir()
    path = root / name if root is not None else PACKAGED_DATA / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"sonolab data folder {name}/: expected {path}, which this installation lacks "
            "(install sonolab with pip from its repository or a wheel built from it)"
        )
    return path


def conf_dir() -> Path:
    """The Hydra config folder (config.yaml and the groups task/, agent/, patient/, probe/, ...)."""
    return _data_dir("conf")


def assets_dir() -> Path:
    """The assets folder (robots/ with the URDFs, patients/ with the example CT)."""
    return _data_dir("assets")


def asset(relative: str) -> str:
    """The absolute path of `relative`, a path under assets_dir() (`${sonolab.asset:<relative>}` in a config)."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        raise InputError(f"{ASSET_RESOLVER} {relative!r}: expected a path inside sonolab's assets folder")
    return str(assets_dir() / path)


def register_resolvers() -> None:
    """Register `${sonolab.asset:<path>}` with OmegaConf (conf/patient/totalseg_example.yaml uses it),
    so that a config names a shipped file wherever sonolab is installed and whatever the current
    folder. Called where configs are composed (`tasks.schemas.register_schemas`); calling it again
    changes nothing."""
    from omegaconf import OmegaConf  # here, not at import: importing sim stays light

    if not OmegaConf.has_resolver(ASSET_RESOLVER):
        OmegaConf.register_new_resolver(ASSET_RESOLVER, asset)
