"""Export and load fail safe: hard-bounded safety limits, deploy.json's schema and manifest, and
an export that writes only verified folders."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.deploy.policy import ExportedPolicy, write_manifest
from policies.deploy.runtime import Runtime
from policies.export import export_policy
from policies.runner import Runner
from policies.workflow import build_env, compose_config, train_config, trained_run
from sim.errors import InputError
from sim.robot.safety import ExportSettings, SafetyLimits, SafetyMonitor
from tasks.us_nav.deploy import deployment_spec, safety_limits
from tests.tasks_helpers import LIMITS, ROOT, SMALL_RUN

SCRIPTS = ROOT / "scripts"
SETTINGS = {"samples": 128, "max_force_n": 25.0, "speed_margin": 2.0, "workspace_margin_m": 0.03, "stop_margin_m": 0.01}


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained state-policy run with its exported folder."""
    root = tmp_path_factory.mktemp("run")
    quick = ["num_envs=16", "agent.num_steps_per_env=8", "agent.max_iterations=1", *SMALL_RUN]
    trained = script("train.py", "task=us_nav_state", *quick, f"log_root={root}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    exported = script(
        "export.py", "task=us_nav_state", "checkpoint=last", f"log_root={root}", "export.samples=16", *SMALL_RUN
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    return Path(trained.stdout.strip().splitlines()[-1])


def copy_export(run_dir: Path, to: Path) -> Path:
    folder = to / "exported"
    shutil.copytree(run_dir / "exported", folder)
    return folder


def edit_spec(folder: Path, edit: Callable[[dict], None], rehash: bool) -> None:
    """Apply `edit` to folder/deploy.json; rehash: recompute the manifest, as an attacker could."""
    spec = json.loads((folder / "deploy.json").read_text())
    edit(spec)
    (folder / "deploy.json").write_text(json.dumps(spec))
    if rehash:
        write_manifest(folder)


def test_export_script_refuses_a_nan_limit_before_any_work(tmp_path):
    out = script(
        "export.py",
        "task=us_nav_state",
        "checkpoint=last",
        f"log_root={tmp_path}",
        "export.max_force_n=nan",
        *SMALL_RUN,
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert out.stderr.startswith("error: export.max_force_n: expected a finite number in (0, 45] N, got nan")
    assert not list(tmp_path.iterdir())  # nothing was read, built or written


@pytest.mark.parametrize(
    "override, message",
    [
        ("export.speed_margin=inf", "export.speed_margin: expected a finite number in [1, 10], got inf"),
        ("export.samples=0", "export.samples: expected an integer in [1, 100000], got 0"),
        ("export.stop_margin_m=-0.01", "export.stop_margin_m: expected a finite number in (0, 0.05] m, got -0.01"),
    ],
)
def test_export_refuses_unsafe_settings_before_any_work(tmp_path, override, message):
    spec = importlib.util.spec_from_file_location("export_script", SCRIPTS / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # scripts/export.py's own export(), as its main() calls it
    with pytest.raises(InputError) as err:
        module.export(
            compose_config(["task=us_nav_state", "checkpoint=last", f"log_root={tmp_path}", override, *SMALL_RUN])
        )
    assert str(err.value) == message and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_force_n", -1.0),
        ("max_force_n", 46.0),
        ("max_force_n", True),
        ("max_force_n", "25"),
        ("max_force_n", None),
        ("speed_margin", 0.5),
        ("speed_margin", math.inf),
        ("workspace_margin_m", 0.2),
        ("stop_margin_m", 0.0),
        ("samples", 1.5),
    ],
)
def test_export_settings_are_checked_against_hard_bounds(key, value):
    with pytest.raises(InputError, match=f"^export.{key}: expected"):
        ExportSettings.from_dict({**SETTINGS, key: value})
    with pytest.raises(InputError, match="colour"):
        ExportSettings.from_dict({**SETTINGS, "colour": 1})
    with pytest.raises(InputError, match="missing \\['stop_margin_m'\\]"):
        ExportSettings.from_dict({k: v for k, v in SETTINGS.items() if k != "stop_margin_m"})


def test_tampered_deploy_json_is_refused_by_the_manifest(run_dir, tmp_path):
    folder = copy_export(run_dir, tmp_path)
    edit_spec(
        folder, lambda s: s["safety"].update(max_force_n=30.0), rehash=False
    )  # within bounds: only the hash can tell
    with pytest.raises(InputError, match="deploy.json: missing or its sha256 differs from manifest.json"):
        ExportedPolicy(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(InputError, match="manifest.json: expected the manifest"):
        Runtime(folder, "torchscript")


def scale(spec: dict, factor: float) -> None:
    spec["action"]["scale"] = [s * factor for s in spec["action"]["scale"]]


def scale_with_config(spec: dict, translation_m: float) -> None:
    """An attacker who edits the task config and the action scale consistently."""
    spec["task"]["config"]["actions"]["translation_m"] = translation_m
    spec["action"]["scale"][:2] = [translation_m, translation_m]


HAND_EDITS = {
    "force 1e6 N": (
        lambda s: s["safety"].update(max_force_n=1e6),
        "safety.max_force_n: expected a finite number in \\(0, 45\\] N",
    ),
    "force NaN": (lambda s: s["safety"].update(max_force_n=math.nan), "safety.max_force_n: expected a finite number"),
    "speed 10 m/s": (lambda s: s["safety"].update(max_speed_m_s=10.0, stop_speed_m_s=10.0), "safety.max_speed_m_s"),
    "speed beyond the scale": (
        lambda s: scale_with_config(s, 0.0005),
        "safety.max_speed_m_s: expected at most 10 x one full action step",
    ),
    "box 5 m": (lambda s: s["safety"].update(workspace_high_m=[5.0, 0.0, 0.1]), "workspace_high_m\\[0\\]"),
    "scale x10": (lambda s: scale(s, 10.0), "action.scale\\[0\\] \\(lateral, per step\\)"),
    "scale x1.5": (lambda s: scale(s, 1.5), "action.scale: expected .* \\(from task.config\\)"),
    "scale and config 57 mm": (lambda s: scale_with_config(s, 0.057), "action.scale\\[0\\]"),
    "press 0.5 m": (lambda s: s["task"]["config"]["actions"].update(press_m=0.5), "actions.press_m"),
    "dt negative": (
        lambda s: s["control"].update(dt_s=-0.1),
        "control.dt_s: expected a finite number in \\[0.001, 1\\] s",
    ),
    "dt not 1 / rate": (lambda s: s["control"].update(dt_s=0.05), "control.dt_s: expected 1 / rate_hz"),
    "steps 1.5": (lambda s: s["control"].update(episode_steps=1.5), "control.episode_steps"),
    "clamp relaxed": (lambda s: s["action"].update(clamp=[-10.0, 10.0]), "action.clamp"),
    "input width": (lambda s: s["observation"]["inputs"][0].update(shape=["batch", 27]), "layout"),
    "joint limits swapped": (
        lambda s: s["robot"]["joints"][0].update(lower_rad=3.0, upper_rad=-3.0),
        "robot.joints\\[0\\]",
    ),
    "no safety": (lambda s: s.pop("safety"), "missing \\['safety'\\]"),
    "unverified": (lambda s: s["verification"]["max_abs_error"].update(onnx=0.1), "verification.max_abs_error.onnx"),
}


@pytest.mark.parametrize("case", list(HAND_EDITS))
def test_hand_edited_deploy_json_is_refused_on_load_even_with_a_recomputed_hash(run_dir, tmp_path, case):
    edit, message = HAND_EDITS[case]
    folder = copy_export(run_dir, tmp_path)
    edit_spec(folder, edit, rehash=True)
    with pytest.raises(InputError, match=message):
        ExportedPolicy(folder, "torchscript")
    with pytest.raises(InputError, match=message):
        Runtime(folder, "onnx")


def test_onnx_graph_must_match_deploy_json(run_dir, tmp_path):
    folder = copy_export(run_dir, tmp_path)
    edit_spec(folder, lambda s: s["observation"]["inputs"][0].update(name="state"), rehash=True)
    with pytest.raises(InputError, match="policy.onnx inputs: expected \\{'state': \\[16\\]\\}"):
        ExportedPolicy(folder)


@pytest.fixture(scope="module")
def loaded(run_dir):
    """(env, actor) of the run, loaded in-process the way scripts/export.py loads them."""
    cfg = compose_config([f"checkpoint={run_dir}", *SMALL_RUN])
    _, checkpoint = trained_run(cfg)
    torch.manual_seed(0)
    env = build_env(cfg, "train", num_envs=2)
    runner = Runner(env, train_config(cfg), None, "cpu")
    runner.load(str(checkpoint))
    return env, runner.alg.get_policy()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_failed_verification_leaves_no_deployable_folder(loaded, tmp_path):
    env, model = loaded
    spec = deployment_spec(env, ExportSettings.from_dict(SETTINGS))
    with pytest.raises(InputError, match="outputs differ from the training model .* nothing was written"):
        export_policy(model, env, tmp_path / "exported", spec, samples=4, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="export tolerance: expected a finite number at most 1e-05"):
        export_policy(
            model, env, tmp_path / "exported", spec, samples=4, tolerance=1.0
        )  # never looser than the default


def test_export_replaces_an_old_folder_only_when_verified(loaded, tmp_path):
    env, model = loaded
    spec = deployment_spec(env, ExportSettings.from_dict(SETTINGS))
    old = tmp_path / "exported"
    old.mkdir()
    (old / "deploy.json").write_text("{}")
    with pytest.raises(InputError):
        export_policy(model, env, old, spec, samples=4, tolerance=-1.0)
    assert (old / "deploy.json").read_text() == "{}" and leftovers(tmp_path) == []
    assert export_policy(model, env, old, spec, samples=4) == old
    assert ExportedPolicy(old).spec["verification"]["samples"] == 4 and leftovers(tmp_path) == []


def test_speed_margin_that_breaks_the_speed_bound_is_refused(loaded):
    env, _ = loaded
    with pytest.raises(
        InputError, match="export.speed_margin: expected a margin that keeps the target speeds within \\(0, 0.25\\] m/s"
    ):
        safety_limits(env, ExportSettings.from_dict({**SETTINGS, "speed_margin": 4.0}))  # 0.28 m/s


def test_safety_monitor_refuses_a_bad_control_period():
    for dt in (-0.1, 0.0, math.nan, 10.0):
        with pytest.raises(InputError, match="control period dt_s"):
            SafetyMonitor(LIMITS, np.zeros(3), dt)


ANYTHING = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
CORNER = st.one_of(st.lists(st.floats(-2.0, 2.0) | ANYTHING, min_size=3, max_size=3), ANYTHING)
SCALAR = st.one_of(st.floats(-1.0, 50.0), ANYTHING)  # mostly near and inside the bounds, so some limits are built


@settings(max_examples=50, deadline=None)
@given(
    low=CORNER, high=CORNER, speed=SCALAR, turn=SCALAR, stop=SCALAR, force=SCALAR, margin=SCALAR,
)  # fmt: skip
def test_safety_limits_never_leave_the_hard_bounds(low, high, speed, turn, stop, force, margin):
    values = dict(
        workspace_low_m=low,
        workspace_high_m=high,
        max_speed_m_s=speed,
        max_angular_speed_rad_s=turn,
        stop_speed_m_s=stop,
    )
    values.update(max_force_n=force, stop_margin_m=margin)
    try:
        limits = SafetyLimits.from_dict(values)
    except InputError:
        return
    assert 0 < limits.max_force_n <= 45 and 0 < limits.max_speed_m_s <= limits.stop_speed_m_s <= 0.25
    assert 0 < limits.max_angular_speed_rad_s <= 2.5 and 0 < limits.stop_margin_m <= 0.05
    corners = np.array([limits.workspace_low_m, limits.workspace_high_m], dtype=np.float64)
    assert corners.shape == (2, 3) and np.isfinite(corners).all() and (np.abs(corners) <= 1).all()
    assert ((corners[1] - corners[0] > 0) & (corners[1] - corners[0] <= 1)).all()
    assert all(
        type(v) is float
        for v in (limits.max_force_n, limits.max_speed_m_s, limits.stop_speed_m_s, limits.max_angular_speed_rad_s)
    )
