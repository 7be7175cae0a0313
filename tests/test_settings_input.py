"""Bad top-level settings and agent numbers are refused, naming the key, before any patient is prepared."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import gymnasium as gym
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

import tasks  # noqa: F401 (registers the Gymnasium ids)
from policies.settings import check_settings
from policies.workflow import compose_config
from sim.errors import InputError
from tests.tasks_helpers import ROOT

# A cache no test fills: a check that ran after patients were prepared would leave files in it.
CACHE_ENV = "SONOLAB_CACHE"


@pytest.fixture(scope="module")
def cfg():
    return compose_config(["task=us_nav_state"])


def with_setting(cfg, key: str, value):
    """A copy of cfg with the dotted `key` set to `value` (any type, as Hydra would type it)."""
    copy = cfg.copy()
    with open_dict(copy):
        *parents, leaf = key.split(".")
        node = copy
        for part in parents:
            node = node[part]
        node[leaf] = value
    return copy


def test_the_shipped_configs_pass(cfg):
    assert check_settings(cfg) == cfg.num_envs
    assert check_settings(compose_config(["task=us_nav"]), num_envs=3) == 3


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_envs", "abc"),
        ("num_envs", 1.5),
        ("num_envs", 0),
        ("num_envs", -3),
        ("num_envs", True),
        ("num_envs", None),
        ("seed", -1),
        ("seed", 0.5),
        ("seed", 2**64),
        ("device", "gpu"),
        ("device", 3),
        ("logger", "csv"),
        ("resume", 1),
        ("resume", ""),
        ("checkpoint", None),
        ("split", "val"),
        ("video", "yes"),
        ("viewer", 1),
        ("trajectory", None),
        ("video_steps", 0),
        ("agent.max_iterations", 0),
        ("agent.num_steps_per_env", 2.5),
        ("agent.save_interval", False),
        ("agent.algorithm.learning_rate", math.nan),
        ("agent.algorithm.learning_rate", math.inf),
        ("agent.algorithm.learning_rate", 0.0),
        ("agent.algorithm.learning_rate", "fast"),
        ("agent.algorithm.gamma", math.inf),
        ("agent.algorithm.gamma", 1.5),
        ("agent.algorithm.lam", 0.0),
        ("agent.algorithm.clip_param", -0.2),
        ("agent.algorithm.entropy_coef", math.nan),
        ("agent.algorithm.value_loss_coef", -1.0),
        ("agent.algorithm.max_grad_norm", 0.0),
        ("agent.algorithm.desired_kl", math.inf),
        ("agent.algorithm.num_learning_epochs", 0),
        ("agent.algorithm.num_mini_batches", 1.0),
        ("agent.algorithm.schedule", "cosine"),
        ("agent.actor.distribution_cfg.init_std", -1.0),
    ],
)
def test_bad_settings_are_refused_naming_the_key(cfg, key, value):
    with pytest.raises(InputError, match=rf"^{re.escape(key)}\b.*expected"):
        check_settings(with_setting(cfg, key, value))


def test_log_root_that_is_a_file_is_refused(cfg, tmp_path):
    file = tmp_path / "logs.txt"
    file.write_text("not a folder")
    for root in (file, file / "below"):
        with pytest.raises(InputError, match="log_root: expected a folder or a path that does not exist yet"):
            check_settings(with_setting(cfg, "log_root", str(root)))
    check_settings(with_setting(cfg, "log_root", str(tmp_path / "new" / "logs")))  # made by the run


def test_a_misspelt_task_key_is_refused_before_the_patients_are_prepared(cfg):
    plain = OmegaConf.to_container(cfg, resolve=True)  # the task group's schema would refuse the key itself
    plain["task"]["success"]["hold_stepz"] = 3
    with pytest.raises(InputError, match=r"task config\.success keys \['hold_stepz'\] are unknown"):
        check_settings(plain)


def test_a_misspelt_probe_key_is_refused_even_where_nothing_renders(cfg):
    """us_nav_state renders no image, but `probe.lnes=64` must not pass silently."""
    with pytest.raises(InputError, match=r"probe config keys \['lnes'\] are unknown"):
        check_settings(with_setting(cfg, "probe.lnes", 64))


def test_mini_batches_need_samples(cfg):
    small = with_setting(with_setting(cfg, "agent.num_steps_per_env", 2), "agent.algorithm.num_mini_batches", 5)
    with pytest.raises(
        InputError,
        match=r"agent.algorithm.num_mini_batches: expected at most num_envs x agent.num_steps_per_env = 2 x 2 = 4",
    ):
        check_settings(small, num_envs=2)
    assert check_settings(small, num_envs=3) == 3


def test_num_envs_argument_overrides_the_config_and_is_checked(cfg):
    assert check_settings(cfg, num_envs=1) == 1
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InputError, match="num_envs: expected an int >= 1"):
            check_settings(cfg, num_envs=bad)


@settings(max_examples=50, deadline=None)
@given(
    num_envs=st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)),
    seed=st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True)),
    learning_rate=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2)),
)
def test_random_values_are_accepted_exactly_when_valid(cfg, num_envs, seed, learning_rate):
    valid = (
        type(num_envs) is int and num_envs >= 1 and type(seed) is int and 0 <= seed < 2**63
        and not isinstance(learning_rate, bool) and math.isfinite(learning_rate) and 0 < learning_rate <= 1
    )  # fmt: skip
    candidate = with_setting(
        with_setting(with_setting(cfg, "num_envs", num_envs), "seed", seed),
        "agent.algorithm.learning_rate",
        learning_rate,
    )
    if valid:
        assert check_settings(candidate) == num_envs
    else:
        with pytest.raises(InputError, match=r"^(num_envs|seed|agent\.algorithm\.learning_rate): expected"):
            check_settings(candidate)


@pytest.mark.parametrize("num_envs", [0, -3, 1.5, True])
def test_make_vec_refuses_bad_num_envs(num_envs):
    with pytest.raises(InputError, match="num_envs: expected an int >= 1"):
        gym.make_vec("Sonolab-UsNavState-v0", num_envs=num_envs, backend="torch")


TRAIN_CASES = {
    "num_envs=abc": "num_envs",
    "num_envs=1.5": "num_envs",
    "agent.algorithm.learning_rate=nan": "agent.algorithm.learning_rate",
    "agent.algorithm.gamma=inf": "agent.algorithm.gamma",
    "log_root=FILE": "log_root",
    "+task.success.hold_stepz=3": "task config.success keys ['hold_stepz'] are unknown",
}
BENCHMARK_CASES = {
    "env --task nope": "invalid choice: 'nope'", "render --height abc": "invalid int value",
}  # fmt: skip


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, object]]:
    """Every case of train.py and benchmark.py below, run at once (each is mostly Python start-up):
    case -> (finished process, its folder holding its cache and log root)."""
    procs = {}
    for case in [*TRAIN_CASES, *BENCHMARK_CASES]:
        folder = tmp_path_factory.mktemp("run")
        (folder / "a_file").write_text("")
        if case in TRAIN_CASES:
            args = [
                "scripts/train.py",
                "task=us_nav_state",
                f"log_root={folder / 'logs'}",
                case.replace("FILE", str(folder / "a_file")),
            ]
        else:
            args = ["scripts/benchmark.py", *case.split(), "--json"]
        env = {**os.environ, CACHE_ENV: str(folder / "cache")}
        procs[case] = (
            subprocess.Popen(
                [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
            ),
            folder,
        )
    runs = {}
    for case, (proc, folder) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        runs[case] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), folder)
    return runs


def assert_one_line_error(out: subprocess.CompletedProcess, folder, starts: str) -> str:
    """The script exited 2 with one stderr line starting with `starts`, before preparing a patient."""
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), out.stderr
    assert not (folder / "cache").exists()  # failed before any patient was prepared
    return lines[0]


@pytest.mark.parametrize("override", TRAIN_CASES)
def test_train_script_refuses_bad_settings_fast(script_runs, override):
    out, folder = script_runs[override]
    assert_one_line_error(out, folder, f"error: {TRAIN_CASES[override]}: expected")
    assert not (folder / "logs").exists()  # and before a run folder was made


@pytest.mark.parametrize("args", BENCHMARK_CASES)
def test_benchmark_reports_bad_input_in_one_line(script_runs, args):
    out, folder = script_runs[args]
    assert BENCHMARK_CASES[args] in assert_one_line_error(out, folder, "error: ")
