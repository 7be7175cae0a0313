"""deploy.json's schema: types, required keys, ranges and consistency with the exported graphs.

A loaded deploy.json is trusted only after this check. The manifest's sha256 proves that the
files belong together, not that they are safe: whoever can edit deploy.json can recompute its
hash too. What makes a hand-edited deploy.json harmless is this schema: every safety limit lies
within the hard bounds of `sim.robot.safety`, the action scale and control period must be the
ones the task config implies (the robot-side controller moves the probe by task.config), the
scale itself is bounded, the speed limits must agree with the scale, a task whose robot drills
must have its drill limits (feed and thrust, no looser than its config allows), what the robot
reports beyond every robot's state (robot.reports) must be what the task says, and the
observation and action shapes must match the ONNX graph.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Mapping

from sim.errors import InputError, require
from sim.robot.safety import DT_S, SAMPLES, SPEED_MARGIN, Bound, SafetyLimits
from tasks import registry

DEPLOY_FORMAT = "sonolab-deploy/1"
TOLERANCE = 1e-5  # max |exported - training model| per action on the samples
DIFFUSION_TOLERANCE = 1e-4  # a diffusion policy's: its denoising loop compounds float32 rounding over its steps
REQUIRED = ("format", "task", "control", "observation", "action", "robot", "safety", "versions", "verification")
OPTIONAL = ("task_frame", "source", "policy")  # policy: a diffusion policy's part (its graphs replace policy.onnx)
# A diffusion export's graphs per engine, with their inputs in order (policies.deploy.diffusion runs them).
DIFFUSION_GRAPHS = {
    "encoder": {"onnx": "encoder.onnx", "torchscript": "encoder.pt"},
    "denoiser": {"onnx": "denoiser.onnx", "torchscript": "denoiser.pt"},
}
ENCODER_INPUTS = ("state_history", "image_history")  # image_history only for image policies
DENOISER_INPUTS = ("sample", "timestep", "cond")
POLICY_KEYS = (
    "kind", "obs_horizon", "horizon", "action_steps", "state_input", "image_input", "image_channels",
    "schedule", "action_scale", "action_offset",
)  # fmt: skip
# The largest motion one step of a full action may command, by unit: 10 mm of translation and
# 0.2 rad (11.5 degrees) of rotation, twice the us_nav defaults (5 mm, 0.1 rad): a policy trained
# with more than that moves a probe on a patient too far between two looks at the image.
MAX_STEP = {"m": Bound(0.0, 0.01, "m"), "rad": Bound(0.0, 0.2, "rad")}
RATE_HZ = Bound(1.0, 1000.0, "Hz", low_open=False)  # the control period's bounds, DT_S, as a rate
DT_TOLERANCE_S = 1e-9


def validate_spec(spec: object, folder: Path) -> None:
    """Raise InputError naming the first key of deploy.json (in `folder`) that is missing, of the
    wrong type, out of its bounds or inconsistent with the task config or policy.onnx."""
    what = str(Path(folder) / "deploy.json")
    require(isinstance(spec, Mapping), what, "a JSON object", type(spec).__name__)
    missing, unknown = [k for k in REQUIRED if k not in spec], sorted(set(spec) - {*REQUIRED, *OPTIONAL})
    require(
        not missing and not unknown,
        what,
        f"the keys {list(REQUIRED)} (and optionally {list(OPTIONAL)})",
        f"missing {missing}, unknown {unknown}",
    )
    require(spec["format"] == DEPLOY_FORMAT, f"{what} format", repr(DEPLOY_FORMAT), repr(spec["format"]))
    contract = task_contract(spec["task"], f"{what} task")
    check_control(spec["control"], contract["control"], f"{what} control")
    names = check_inputs(spec["observation"], f"{what} observation")
    dim = check_action(spec["action"], contract["action"], f"{what} action")
    limits = SafetyLimits.from_dict(spec["safety"], f"{what} safety")
    check_speeds(limits, spec["action"], spec["control"]["rate_hz"], f"{what} safety")
    check_task_limits(limits, contract.get("safety", {}), f"{what} safety")
    check_robot(spec["robot"], f"{what} robot", contract.get("reports"))
    diffusion = "policy" in spec
    check_verification(spec["verification"], f"{what} verification", DIFFUSION_TOLERANCE if diffusion else TOLERANCE)
    if diffusion:
        check_diffusion(spec["policy"], Path(folder), spec["observation"]["inputs"], names, dim, f"{what} policy")
    else:
        check_graph(Path(folder) / "policy.onnx", spec["observation"]["inputs"], names, dim)


def task_contract(task: object, what: str) -> dict:
    """The control and action parts deploy.json must have for its task (name and config)."""
    require(
        isinstance(task, Mapping) and set(task) == {"name", "config"}, what, "an object with keys name and config", task
    )
    require(task["name"] in registry.names(), f"{what}.name", f"one of {registry.names()}", repr(task["name"]))
    require(
        isinstance(task["config"], Mapping),
        f"{what}.config",
        "an object (the task's settings)",
        type(task["config"]).__name__,
    )
    contract = registry.deployment_part(task["name"], "deploy_contract")
    return contract(task["config"], f"{what}.config")


def check_control(control: object, expected: Mapping, what: str) -> None:
    """rate_hz in RATE_HZ, dt_s = 1 / rate_hz within the period's bounds, episode_steps a positive int,
    all as the task config says."""
    require(
        isinstance(control, Mapping) and set(control) == set(expected),
        what,
        f"an object with keys {sorted(expected)}",
        control,
    )
    rate = RATE_HZ.check(control["rate_hz"], f"{what}.rate_hz")
    dt = DT_S.check(control["dt_s"], f"{what}.dt_s")
    require(abs(dt - 1.0 / rate) <= DT_TOLERANCE_S, f"{what}.dt_s", f"1 / rate_hz = {1.0 / rate} s", dt)
    require(
        _positive_int(control["episode_steps"]),
        f"{what}.episode_steps",
        "a positive integer",
        repr(control["episode_steps"]),
    )
    for key in ("rate_hz", "episode_steps"):
        require(control[key] == expected[key], f"{what}.{key}", f"{expected[key]} (from task.config)", control[key])


def check_inputs(observation: object, what: str) -> list[str]:
    """Each input: a unique name, dtype float32, shape ["batch", positive ints...]; the policy
    vector's layout segments add up to its width. Returns the names in order."""
    inputs = observation.get("inputs") if isinstance(observation, Mapping) else None
    require(isinstance(inputs, list) and inputs, f"{what}.inputs", "a non-empty list of inputs", inputs)
    names = []
    for i, entry in enumerate(inputs):
        where = f"{what}.inputs[{i}]"
        require(isinstance(entry, Mapping) and isinstance(entry.get("name"), str), f"{where}.name", "a string", entry)
        require(entry.get("dtype") == "float32", f"{where}.dtype", "'float32'", repr(entry.get("dtype")))
        shape = entry.get("shape")
        require(
            isinstance(shape, list)
            and len(shape) >= 2
            and shape[0] == "batch"
            and all(_positive_int(d) for d in shape[1:]),
            f"{where}.shape",
            '["batch", positive integers...]',
            shape,
        )
        if "layout" in entry:
            layout = entry["layout"]
            sizes = (
                [s.get("size") for s in layout]
                if isinstance(layout, list) and all(isinstance(s, Mapping) for s in layout)
                else None
            )
            require(
                sizes is not None
                and all(_positive_int(s) for s in sizes)
                and len(shape) == 2
                and sum(sizes) == shape[1],
                f"{where}.layout",
                f"segments whose sizes add up to the input width {shape[1:]}",
                sizes,
            )
        names.append(entry["name"])
    require(len(set(names)) == len(names), f"{what}.inputs", "unique names", names)
    return names


def check_action(action: object, expected: Mapping, what: str) -> int:
    """names/units/scale/clamp of the action dim, clamp [-1, 1], every step within MAX_STEP, and
    all as the task config says (a hand-edited scale is refused). Returns the action dim."""
    require(
        isinstance(action, Mapping) and set(action) == set(expected),
        what,
        f"an object with keys {sorted(expected)}",
        action,
    )
    shape = action["shape"]
    require(
        isinstance(shape, list) and len(shape) == 2 and shape[0] == "batch" and _positive_int(shape[1]),
        f"{what}.shape",
        '["batch", A]',
        shape,
    )
    dim = shape[1]
    for key in ("names", "units", "scale"):
        require(
            isinstance(action[key], list) and len(action[key]) == dim,
            f"{what}.{key}",
            f"a list of {dim} (the action dim)",
            action[key],
        )
    require(action["clamp"] == [-1.0, 1.0], f"{what}.clamp", "[-1.0, 1.0]", action["clamp"])
    for i, (unit, scale) in enumerate(zip(action["units"], action["scale"])):
        require(unit in MAX_STEP, f"{what}.units[{i}]", f"one of {sorted(MAX_STEP)}", repr(unit))
        MAX_STEP[unit].check(scale, f"{what}.scale[{i}] ({action['names'][i]}, per step)")
    for key in expected:
        require(action[key] == expected[key], f"{what}.{key}", f"{expected[key]} (from task.config)", action[key])
    return dim


def check_speeds(limits: SafetyLimits, action: Mapping, rate_hz: float, what: str) -> None:
    """The speed limits may not exceed one full action step per period times the largest
    speed margin an export accepts (translation and rotation steps taken on all axes at once)."""
    for unit, key in (("m", "max_speed_m_s"), ("rad", "max_angular_speed_rad_s")):
        step = math.hypot(*(s for u, s in zip(action["units"], action["scale"]) if u == unit))
        most = SPEED_MARGIN.high * step * rate_hz
        expected = f"at most {SPEED_MARGIN.high:g} x one full action step per period = {most:.4g}"
        require(getattr(limits, key) <= most, f"{what}.{key}", expected, getattr(limits, key))


def check_task_limits(limits: SafetyLimits, most: Mapping[str, float], what: str) -> None:
    """Every optional limit the task's contract names (its "safety": {key: at most}) is set and at
    most that value: a drilling robot's file without its feed or thrust limit, or with a looser
    one than its task allows, is refused."""
    for key, high in most.items():
        value = getattr(limits, key)
        require(
            value is not None and value <= high,
            f"{what}.{key}",
            f"a limit of at most {high:g} (this task's robot drills)",
            "none" if value is None else value,
        )


def check_robot(robot: object, what: str, reports: Mapping | None = None) -> None:
    """name, urdf, tool_frame strings; base pose 7 finite numbers with a unit quaternion; joints:
    a name, finite lower < upper and a positive finite velocity each; reports (what the robot
    reports beyond every robot's state) exactly the task contract's `reports` (absent for none)."""
    require(isinstance(robot, Mapping), what, "an object", type(robot).__name__)
    require(
        robot.get("reports") == reports,
        f"{what}.reports",
        f"{reports} (from task.config)" if reports is not None else "no reports key (this task's robot reports none)",
        robot.get("reports"),
    )
    for key in ("name", "urdf", "tool_frame"):
        require(isinstance(robot.get(key), str) and robot[key], f"{what}.{key}", "a non-empty string", robot.get(key))
    base = robot.get("base_pose_in_anchor_frame")
    require(
        isinstance(base, list) and len(base) == 7 and all(_finite(v) for v in base),
        f"{what}.base_pose_in_anchor_frame",
        "7 finite numbers",
        base,
    )
    require(
        abs(math.hypot(*base[3:]) - 1.0) < 1e-6,
        f"{what}.base_pose_in_anchor_frame",
        "a unit quaternion (w, x, y, z) after the position",
        base[3:],
    )
    joints = robot.get("joints")
    require(isinstance(joints, list) and joints, f"{what}.joints", "a non-empty list", joints)
    for i, joint in enumerate(joints):
        numbers_ = isinstance(joint, Mapping) and all(
            _finite(joint.get(k)) for k in ("lower_rad", "upper_rad", "velocity_rad_s")
        )
        ok = (
            numbers_
            and isinstance(joint.get("name"), str)
            and joint["lower_rad"] < joint["upper_rad"]
            and joint["velocity_rad_s"] > 0
        )
        require(ok, f"{what}.joints[{i}]", "a name, finite lower_rad < upper_rad and velocity_rad_s > 0", joint)


def check_verification(verification: object, what: str, bound: float = TOLERANCE) -> None:
    """The export's record that both engines matched the training model within its tolerance (at most `bound`)."""
    keys = {"samples", "max_abs_error", "tolerance"}
    require(
        isinstance(verification, Mapping) and set(verification) == keys,
        what,
        f"an object with keys {sorted(keys)}",
        verification,
    )
    SAMPLES.check(verification["samples"], f"{what}.samples")
    tolerance = Bound(0.0, bound, low_open=False).check(verification["tolerance"], f"{what}.tolerance")
    errors = verification["max_abs_error"]
    require(
        isinstance(errors, Mapping) and set(errors) == {"onnx", "torchscript"},
        f"{what}.max_abs_error",
        "errors of onnx and torchscript",
        errors,
    )
    for engine, error in errors.items():
        Bound(0.0, tolerance, low_open=False).check(error, f"{what}.max_abs_error.{engine}")


def graph_io(path: Path) -> tuple[list[str], dict[str, list], list[list]]:
    """An ONNX graph's input names in order, {input: shape after the batch} and its outputs' full
    shapes ("batch" for a dynamic dimension); read with onnx: the graph is inspected, not run."""
    import onnx

    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:  # onnx raises DecodeError and others for a file that is not a model
        raise InputError(f"{path}: not a readable ONNX model ({err})") from err

    def dims(value) -> list:
        return [d.dim_value if d.HasField("dim_value") else "batch" for d in value.type.tensor_type.shape.dim]

    return [v.name for v in graph.input], {v.name: dims(v)[1:] for v in graph.input}, [dims(v) for v in graph.output]


def check_io(path: Path, wanted: dict[str, list], output: list) -> None:
    """The graph at `path` has exactly the inputs `wanted` ({name: shape after the batch}, in
    order) and one output of shape `output` after the batch."""
    order, found, outputs = graph_io(path)
    require(order == list(wanted) and found == wanted, f"{path} inputs", f"{wanted} as in deploy.json", found)
    require(len(outputs) == 1 and outputs[0][1:] == output, f"{path} outputs", f"one output of shape {output}", outputs)


def check_graph(path: Path, inputs: list[Mapping], names: list[str], dim: int) -> None:
    """policy.onnx's inputs (names, order, shapes after the batch) are deploy.json's and its one
    output has the action dim."""
    check_io(path, {n: i["shape"][1:] for n, i in zip(names, inputs)}, [dim])


def check_diffusion(part: object, folder: Path, inputs: list[Mapping], names: list[str], dim: int, what: str) -> None:
    """A diffusion policy's part of deploy.json: horizons, the inputs that make its frames, the
    DDIM schedule, the action map and its two graphs' inputs and outputs (`policies.deploy.diffusion`)."""
    from policies.diffusion.schedule import check_schedule  # numpy only

    require(
        isinstance(part, Mapping) and set(part) == set(POLICY_KEYS),
        what,
        f"an object with keys {list(POLICY_KEYS)}",
        part,
    )
    require(part["kind"] == "diffusion", f"{what}.kind", "'diffusion'", repr(part["kind"]))
    to, horizon, steps = (part[k] for k in ("obs_horizon", "horizon", "action_steps"))
    require(
        all(_positive_int(v) for v in (to, horizon, steps)) and to - 1 + steps <= horizon,
        f"{what} horizons",
        "positive ints with obs_horizon - 1 + action_steps <= horizon",
        (to, horizon, steps),
    )
    shapes = {n: i["shape"][1:] for n, i in zip(names, inputs)}
    state = part["state_input"]
    require(state in shapes and len(shapes[state]) == 1, f"{what}.state_input", f"a vector input of {names}", state)
    image, channels = part["image_input"], part["image_channels"]
    encoder = {"state_history": [to, shapes[state][0]]}
    if image is not None:
        require(image in shapes and len(shapes[image]) == 3, f"{what}.image_input", f"an image input of {names}", image)
        count = shapes[image][0]
        require(
            isinstance(channels, list) and channels and all(isinstance(c, int) and 0 <= c < count for c in channels),
            f"{what}.image_channels",
            f"channel indices below {count}",
            channels,
        )
        encoder["image_history"] = [to, len(channels), *shapes[image][1:]]
    else:
        require(channels == [], f"{what}.image_channels", "[] without image_input", channels)
    check_schedule(part["schedule"], f"{what}.schedule")
    for key in ("action_scale", "action_offset"):
        values = part[key]
        require(
            isinstance(values, list) and len(values) == dim and all(_finite(v) for v in values),
            f"{what}.{key}",
            f"{dim} finite numbers",
            values,
        )
    require(all(v > 0 for v in part["action_scale"]), f"{what}.action_scale", "positive numbers", part["action_scale"])
    _, _, outputs = graph_io(folder / DIFFUSION_GRAPHS["encoder"]["onnx"])
    check_io(folder / DIFFUSION_GRAPHS["encoder"]["onnx"], encoder, outputs[0][1:] if outputs else [])
    cond = outputs[0][1:] if outputs else []
    check_io(
        folder / DIFFUSION_GRAPHS["denoiser"]["onnx"],
        {"sample": [horizon, dim], "timestep": [], "cond": cond},
        [horizon, dim],
    )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
