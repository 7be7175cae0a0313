"""Run an exported policy on a robot with the reference runtime (safety limits from deploy.json).

    python scripts/deploy.py checkpoint=last task=us_nav_state                       # the simulator
    python scripts/deploy.py checkpoint=last task=us_nav_state deploy.robot=network  # a robot PC over TCP
    python scripts/deploy.py checkpoint=last task=us_nav_state deploy.role=robot_pc  # the simulator as that robot PC
    python scripts/deploy.py checkpoint=last deploy.robot=ros2 deploy.session=session.npz deploy.realtime=true

The policy is <run>/exported (scripts/export.py). With deploy.robot=sim (or role=robot_pc) the
simulator is environment 0 of a one-environment run over `patient`/`split`/`seed`, so a sim run
reproduces `play.py num_envs=1 trajectory=true`. Each episode's trajectory goes to
<run>/trajectories/deploy_<robot>_<episode>.npz; the last line printed is a JSON summary.
"""

from __future__ import annotations

import json
import sys

import hydra
import torch
from omegaconf import DictConfig

from policies.deploy.runtime import Runtime
from policies.export import EXPORT_DIR
from policies.workflow import build_env, trained_run
from sim.errors import InputError

ROBOTS = ("sim", "network", "ros2")


def simulator(cfg: DictConfig):
    """Environment 0 of a one-environment run of the trained task (cfg after `trained_run`)."""
    from policies.deploy.sim_robot import SimRobot

    torch.manual_seed(int(cfg.seed))
    return SimRobot(build_env(cfg, str(cfg.split), num_envs=1))


def deploy(cfg: DictConfig) -> dict:
    d = cfg.deploy
    if d.robot not in ROBOTS or d.role not in ("runtime", "robot_pc"):
        raise InputError(f"deploy.robot {d.robot!r} / deploy.role {d.role!r}: expected robot in {list(ROBOTS)} and role runtime or robot_pc")
    run_dir, _ = trained_run(cfg)
    if d.role == "robot_pc":
        from policies.deploy.network import serve_robot

        return {"role": "robot_pc", "targets": serve_robot(simulator(cfg), str(d.host), int(d.port))}
    runtime = Runtime(run_dir / EXPORT_DIR, str(d.engine))
    if d.robot == "sim":
        robot = simulator(cfg)
    elif d.robot == "network":
        from policies.deploy.network import NetworkRobot

        robot = NetworkRobot(str(d.host), int(d.port))
        print(f"[sonolab] waiting for a robot PC on {d.host}:{robot.port}", flush=True)
    else:
        from policies.deploy.ros2 import Ros2Robot

        if d.session is None:
            raise InputError("deploy.session: expected the .npz session file a ROS 2 robot needs (skin surface, anchor, goal)")
        joints = [j["name"] for j in runtime.spec["robot"]["joints"]]
        images = any(i["name"] == "image" for i in runtime.spec["observation"]["inputs"])
        robot = Ros2Robot(str(d.session), joints, frame_id=str(d.frame_id), images=images)
    episodes = []
    try:
        for i in range(int(d.episodes)):
            log = runtime.run_episode(robot, realtime=bool(d.realtime))
            path = log.save(run_dir / "trajectories" / f"deploy_{d.robot}_{i}.npz")
            episodes.append({"status": log.status, "steps": len(log), "trajectory": str(path)})
    finally:
        if hasattr(robot, "close"):
            robot.close()
    return {"exported": str(run_dir / EXPORT_DIR), "robot": str(d.robot), "engine": str(d.engine), "episodes": episodes}


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        print(json.dumps(deploy(cfg)))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (ConnectionError, TimeoutError) as err:
        print(f"error: robot connection: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
