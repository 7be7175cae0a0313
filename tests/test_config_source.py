"""One source of truth for configuration: the dataclasses are the defaults, conf/ YAML lists only what
differs, Hydra composes exactly what Python builds, and `sim.config.build` is the one way from a mapping."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, dataclass, field

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from policies.workflow import compose_config
from sim.backends.isaaclab.config import IsaacLabCfg
from sim.config import build, to_container
from sim.errors import InputError
from sim.robot.safety import SafetyLimits
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import RendererConfig
from sim.ultrasound.tissue import DEFAULT_TISSUE_TABLE, TissueTable
from tasks import registry
from tests.tasks_helpers import ROOT

CONF = ROOT / "conf"
PROBES = sorted(p.stem for p in (CONF / "probe").glob("*.yaml"))


def leaves(tree: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested mapping's non-mapping values."""
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def plain(config) -> dict:
    """A dataclass instance as YAML would give it: nested dicts, tuples as lists."""
    return OmegaConf.to_container(OmegaConf.structured(config))


def yaml_settings(path) -> dict:
    """A conf/ file's settings: its YAML without Hydra's defaults list."""
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}


def python_task_config(name: str):
    """The config make_env builds for {"name": name}: the dataclass defaults with the variant's settings over them."""
    return build(registry.spec(name).config_class, registry.task_config(name, {"name": name}), "task config")


@pytest.mark.parametrize("name", registry.names())
def test_hydra_composes_the_config_python_builds(name):
    composed = compose_config([f"task={name}"]).task
    built = build(registry.spec(name).config_class, composed, "task config")
    assert asdict(built) == asdict(python_task_config(name))
    assert built.name == name


def test_the_cli_and_python_build_the_same_renderer():
    # The mismatch this replaced: conf/task/us_nav.yaml said compile: true, the dataclass false.
    assert python_task_config("us_nav").renderer == RendererConfig(compile=True)
    assert compose_config(["task=us_nav"]).task.renderer.compile is True


@pytest.mark.parametrize("path", sorted((CONF / "task").glob("*.yaml")), ids=lambda p: p.stem)
def test_task_yaml_lists_only_what_differs(path):
    listed = leaves(yaml_settings(path))
    listed.pop("name", None)  # kept for the reader: which task the file is
    defaults = leaves(plain(python_task_config(path.stem)))
    assert listed.keys() <= defaults.keys() and {k for k, v in listed.items() if v == defaults[k]} == set()


@pytest.mark.parametrize("name", PROBES)
def test_probe_presets_are_the_spec_defaults_plus_what_they_list(name):
    composed = to_container(compose_config([f"probe={name}"]).probe)
    assert composed == asdict(ProbeSpec.preset(name)) == asdict(build(ProbeSpec, composed, "probe"))
    listed, defaults = yaml_settings(CONF / "probe" / f"{name}.yaml"), asdict(ProbeSpec())
    assert {k for k, v in listed.items() if v == defaults[k] and k != "kind"} == set()


def test_backend_groups_match_their_dataclass():
    composed = to_container(compose_config(["backend=isaaclab"]).backend)
    assert composed.pop("name") == "isaaclab" and composed == asdict(IsaacLabCfg())
    assert yaml_settings(CONF / "backend" / "isaaclab.yaml") == {"name": "isaaclab"}
    assert to_container(compose_config(["backend=torch"]).backend) == {"name": "torch"}


def test_any_field_overrides_without_plus_and_types_are_checked():
    cfg = compose_config(["task=us_nav_state", "task.success.position_m=0.003", "probe=convex", "probe.lines=64",
                          "backend=isaaclab", "backend.physics_hz=60", "task.renderer.gain_db=3"])  # fmt: skip
    assert (cfg.task.success.position_m, cfg.probe.lines, cfg.backend.physics_hz, cfg.task.renderer.gain_db) == (
        0.003,
        64,
        60.0,
        3.0,
    )
    with pytest.raises(InputError, match="task.episode_steps"):
        compose_config(["task.episode_steps=abc"])
    # Keys no dataclass has compose (the command line may add them) and are refused by name when built.
    with pytest.raises(InputError, match=r"task config keys \['colour'\] are unknown"):
        build(registry.spec("us_nav").config_class, compose_config(["+task.colour=red"]).task, "task config")


def test_the_scripts_compose_with_the_schemas():
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "task=us_nav_state",
        "task.success.position_m=0.003",
        "--cfg",
        "job",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    task = yaml.safe_load(out.stdout)["task"]
    assert task == to_container(compose_config(["task=us_nav_state", "task.success.position_m=0.003"]).task)
    assert (
        task["success"]["position_m"] == 0.003
        and task["observation"]["images"] is False
        and task["renderer"]["compile"] is True
    )


@dataclass
class Inner:
    span: tuple[float, float] = (0.0, 1.0)
    count: int = 1


@dataclass
class Outer:
    required: float
    inner: Inner = field(default_factory=Inner)
    label: str = "x"

    def __post_init__(self) -> None:
        if self.required < 0:
            raise InputError(f"outer required: expected >= 0, got {self.required}")


def test_build_nests_converts_and_names_bad_keys():
    built = build(Outer, {"required": 2.0, "inner": {"span": [0.5, 2.0]}}, "outer")
    assert built == Outer(2.0, Inner((0.5, 2.0)))
    assert build(Outer, built, "outer") is built
    with pytest.raises(InputError, match=r"^outer.inner keys \['spam'\] are unknown"):
        build(Outer, {"required": 1.0, "inner": {"spam": 1}}, "outer")
    with pytest.raises(
        InputError,
        match=r"^outer: expected the keys \['required', 'inner', 'label'\], got \['label'\] \(missing \['required'\]\)",
    ):
        build(Outer, {"label": "y"}, "outer")
    with pytest.raises(InputError, match="^outer.inner: expected a mapping of settings, got int"):
        build(Outer, {"required": 1.0, "inner": 3}, "outer")
    with pytest.raises(InputError, match="^outer required: expected >= 0"):  # the class's own check, unchanged
        build(Outer, {"required": -1.0}, "outer")


@settings(max_examples=30, deadline=None)
@given(gain=st.floats(-40, 40), dynamic=st.floats(1, 100), seed=st.integers(0, 2**31), compile_=st.booleans())
def test_build_round_trips_dataclass_mappings(gain, dynamic, seed, compile_):
    cfg = RendererConfig(gain_db=gain, dynamic_range_db=dynamic, speckle_seed=seed, compile=compile_)
    assert build(RendererConfig, yaml.safe_load(yaml.safe_dump(plain(cfg))), "renderer") == cfg


def test_from_dict_methods_delegate_to_build_with_their_messages():
    assert ProbeSpec.from_dict({"kind": "convex"}) == ProbeSpec(kind="convex")
    with pytest.raises(InputError, match=r"probe config keys \['colour'\]"):
        ProbeSpec.from_dict({"colour": "blue"})
    assert RendererConfig.from_dict({"gain_db": 3.0}) == RendererConfig(gain_db=3.0)
    with pytest.raises(InputError, match=r"renderer config keys \['gain'\]"):
        RendererConfig.from_dict({"gain": 3})
    limits = {"workspace_low_m": [-0.1, -0.2, -0.1], "workspace_high_m": [0.1, 0.0, 0.1], "max_speed_m_s": 0.1,
              "max_angular_speed_rad_s": 1.0, "stop_speed_m_s": 0.2, "max_force_n": 20.0}  # fmt: skip
    assert SafetyLimits.from_dict(limits).stop_margin_m == 0.01  # the one limit with a default
    with pytest.raises(InputError, match=r"deploy.json safety: expected the keys .* \(missing \['max_force_n'\]\)"):
        SafetyLimits.from_dict({k: v for k, v in limits.items() if k != "max_force_n"}, "deploy.json safety")
    with pytest.raises(InputError, match=r"^deploy.json safety.max_force_n: expected a finite number in \(0, 45\] N"):
        SafetyLimits.from_dict({**limits, "max_force_n": 50.0}, "deploy.json safety")
    rows = yaml.safe_load(DEFAULT_TISSUE_TABLE.read_text())
    rows["bone"] = {**rows["bone"], "colour": 1}
    with pytest.raises(InputError, match=r"tissue table bone keys \['colour'\] are unknown"):
        TissueTable(rows)
