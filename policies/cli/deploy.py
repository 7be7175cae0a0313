"""Run an exported policy on a robot with the reference runtime (safety limits from deploy.json).

    sonolab-deploy checkpoint=last task=us_nav_state                       # the simulator
    sonolab-deploy checkpoint=last task=us_nav_state deploy.robot=network  # a robot PC over TCP
    sonolab-deploy checkpoint=last task=us_nav_state deploy.role=robot_pc  # the simulator as that robot PC
    sonolab-deploy checkpoint=last deploy.robot=ros2 deploy.session=session.npz deploy.realtime=true

The policy is <run>/exported (sonolab-export). With deploy.robot=sim (or role=robot_pc) the
simulator is environment 0 of a one-environment run over `patient`/`split`/`seed`, so a sim run
reproduces `play.py num_envs=1 trajectory=true`. Each episode's trajectory goes to
<run>/trajectories/deploy_<robot>_<timestamp>_<episode>.npz; the last line printed is a JSON
summary with each episode's status ("stopped: <reason>" when the robot was stopped) and what the
task's controller counted (us_surgery: shield_interventions; deploy.shield=true/false turns the
task's shield on or off, null keeps it as exported). Over the network the robot PC
(role=robot_pc) enforces its own limits from deploy.json; off loopback both sides need
deploy.secret (or deploy.secret_file) and the runtime deploy.allow.

The `sonolab-deploy` command (installed sonolab, any folder) and scripts/deploy.py run `main`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig

from policies.deploy.frames import check_secret
from policies.deploy.network import NetworkRobot, is_loopback, serve_robot
from policies.deploy.policy import ENGINES, read_spec
from policies.deploy.robot import Reports
from policies.deploy.runtime import Runtime
from policies.export import EXPORT_DIR
from policies.workflow import build_env, trained_run
from sim.errors import InputError, require
from sim.resources import conf_dir
from sim.robot.safety import SafetyLimits
from tasks import registry
from tasks.schemas import register_schemas

ROBOTS = ("sim", "network", "ros2")
ROLES = ("runtime", "robot_pc")


def simulator(cfg: DictConfig):
    """Environment 0 of a one-environment run of the trained task (cfg after `trained_run`), as
    the task's simulated robot (`tasks.registry.load_sim_robot`)."""
    robot = registry.load_sim_robot(cfg.task.name)
    torch.manual_seed(int(cfg.seed))
    return robot(build_env(cfg, str(cfg.split), num_envs=1))


def _number(d: DictConfig, key: str, low: float, high: float) -> float:
    """deploy.<key>: a finite number in [low, high]."""
    value = d[key]
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
    require(ok, f"deploy.{key}", f"a number in [{low}, {high}]", repr(value))
    return float(value)


def check_settings(d: DictConfig) -> None:
    """Raise `InputError` naming the first bad `deploy.*` setting."""
    require(d.robot in ROBOTS, "deploy.robot", f"one of {list(ROBOTS)}", repr(d.robot))
    require(d.role in ROLES, "deploy.role", f"one of {list(ROLES)}", repr(d.role))
    require(d.engine in ENGINES, "deploy.engine", f"one of {sorted(ENGINES)}", repr(d.engine))
    require(type(d.episodes) is int and d.episodes > 0, "deploy.episodes", "a positive int", repr(d.episodes))
    require(type(d.realtime) is bool, "deploy.realtime", "true or false", repr(d.realtime))
    lowest = (
        0 if d.role == "runtime" else 1
    )  # the runtime may bind port 0 (any free port); a robot PC connects to a real one
    require(
        type(d.port) is int and lowest <= d.port <= 65535, "deploy.port", f"an int in [{lowest}, 65535]", repr(d.port)
    )
    is_loopback(str(d.host))  # an IP address
    _number(d, "timeout_s", 1e-3, 3600.0)
    _number(d, "connect_timeout_s", 1e-3, 86400.0)
    _number(d, "max_penetration_m", 0.0, 0.05)
    require(d.shield is None or type(d.shield) is bool, "deploy.shield", "null, true or false", repr(d.shield))


def set_shield(spec: dict, shield: bool | None) -> None:
    """deploy.shield: the exported task's shield (task.config.shield) as exported (None), or turned
    on or off; InputError naming deploy.shield if the task has none."""
    if shield is None:
        return
    task = spec["task"]
    has = any(f.name == "shield" for f in fields(registry.spec(task["name"]).config_class))
    require(
        has, "deploy.shield", "null for a task without a shield (us_surgery has one)", f"{shield} for {task['name']}"
    )
    task["config"]["shield"] = {**task["config"].get("shield", {}), "enabled": shield}


def read_secret(d: DictConfig) -> bytes | None:
    """The bridge secret from deploy.secret or deploy.secret_file (not both), or None."""
    require(
        d.secret is None or d.secret_file is None, "deploy.secret / deploy.secret_file", "at most one of them", "both"
    )
    if d.secret_file is not None:
        path = Path(str(d.secret_file))
        require(path.is_file(), "deploy.secret_file", "a readable file holding the secret", str(path))
        return check_secret(path.read_bytes().strip())
    return check_secret(None if d.secret is None else str(d.secret).encode())


def serve(cfg: DictConfig, run_dir: Path, secret: bytes | None) -> dict:
    """role=robot_pc: serve the simulator to a runtime, within this side's own limits from the
    exported folder's deploy.json (read and checked here, independently of the runtime)."""
    d, spec = cfg.deploy, read_spec(run_dir / EXPORT_DIR)
    limits, dt = SafetyLimits.from_dict(spec["safety"]), float(spec["control"]["dt_s"])
    robot = simulator(cfg)
    served = serve_robot(
        robot, str(d.host), int(d.port), limits, dt, float(d.timeout_s), secret, float(d.max_penetration_m)
    )
    return {"role": "robot_pc", **served}


def deploy(cfg: DictConfig) -> dict:
    d = cfg.deploy
    check_settings(d)
    secret = read_secret(d)
    run_dir, _ = trained_run(cfg)
    if d.role == "robot_pc":
        return serve(cfg, run_dir, secret)
    runtime = Runtime(run_dir / EXPORT_DIR, str(d.engine))
    set_shield(runtime.spec, d.shield)
    if d.robot == "sim":
        robot = simulator(cfg)
    elif d.robot == "network":
        allow = tuple(d.allow) if isinstance(d.allow, ListConfig) else d.allow
        robot = NetworkRobot(str(d.host), int(d.port), float(d.timeout_s), float(d.connect_timeout_s), secret, allow)
        print(f"[sonolab] waiting for a robot PC on {d.host}:{robot.port}", flush=True)
        robot.accept()
    else:
        from policies.deploy.ros2 import Ros2Robot, check_reports

        reports = Reports.from_spec(runtime.spec["robot"])
        check_reports(reports)  # before asking for a session file the adapter could not use
        if d.session is None:
            raise InputError(
                "deploy.session: expected the .npz session file a ROS 2 robot needs "
                "(skin surface, anchor, goal or plan)"
            )
        joints = [j["name"] for j in runtime.spec["robot"]["joints"]]
        images = any(i["name"] == "image" for i in runtime.spec["observation"]["inputs"])
        robot = Ros2Robot(str(d.session), joints, frame_id=str(d.frame_id), images=images, reports=reports)
    episodes, stamp = [], datetime.now().strftime("%Y%m%d-%H%M%S-%f")  # each run its own files
    try:
        for i in range(int(d.episodes)):
            log = runtime.run_episode(robot, realtime=bool(d.realtime))
            path = log.save(run_dir / "trajectories" / f"deploy_{d.robot}_{stamp}_{i}.npz") if len(log) else None
            episodes.append(
                {
                    "status": log.status,
                    "steps": len(log),
                    "trajectory": None if path is None else str(path),
                    **log.report,
                }
            )
    finally:
        if hasattr(robot, "close"):
            robot.close()
    return {"exported": str(run_dir / EXPORT_DIR), "robot": str(d.robot), "engine": str(d.engine), "episodes": episodes}


register_schemas()  # conf/ starts from the config dataclasses (tasks/schemas.py)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(json.dumps(deploy(cfg)))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # refused, unreachable, address in use, no robot PC within the timeout
        print(f"error: robot connection: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
