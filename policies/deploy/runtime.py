"""The reference runtime: an exported policy drives a robot at its control rate, safely.

Each control step: read the robot's state, stop if it breaks a safety limit, build the policy's
inputs (the task's robot-side controller), run the policy, turn the action into a probe target,
clamp the target to the safety limits and send it; in real time the loop keeps the period.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np

from policies.deploy.policy import ExportedPolicy
from policies.deploy.robot import RobotInterface
from policies.trajectory import Trajectory
from sim.errors import InputError
from sim.robot.safety import SafetyLimits, SafetyMonitor

# task name -> module with the task's robot-side `Controller`
CONTROLLERS = {"us_nav": "tasks.us_nav.deploy", "us_nav_state": "tasks.us_nav.deploy"}


def make_controller(spec: dict):
    name = spec["task"]["name"]
    if name not in CONTROLLERS:
        raise InputError(f"deploy.json task {name!r}: no robot-side controller; expected one of {sorted(CONTROLLERS)}")
    return importlib.import_module(CONTROLLERS[name]).Controller(spec)


class Runtime:
    """Runs the policy exported to `folder` (engine "onnx" or "torchscript") on robots."""

    def __init__(self, folder: str | Path, engine: str = "onnx") -> None:
        self.policy = ExportedPolicy(folder, engine)
        self.spec = self.policy.spec
        self.limits = SafetyLimits.from_dict(self.spec["safety"])
        self.dt = float(self.spec["control"]["dt_s"])

    def run_episode(self, robot: RobotInterface, realtime: bool = False, max_steps: int | None = None) -> Trajectory:
        """One episode on `robot`; returns what the policy saw and did, with its end in `status`
        ("done", "max_steps" or "stopped: <reason>"). realtime: keep the control period (a real
        robot); otherwise step as fast as the robot answers (the simulator)."""
        steps = int(max_steps or self.spec["control"]["episode_steps"])
        controller = make_controller(self.spec)
        session = robot.start()
        state = robot.read()
        controller.start(session, state)
        safety = SafetyMonitor(self.limits, session.anchor_m, self.dt)
        log, previous, tick = Trajectory(), np.asarray(state.probe_pose, np.float32), time.monotonic()
        for step in range(steps + 1):
            if step:
                state = robot.read()
                controller.observe(state)
            reason = safety.check(np.asarray(state.q), np.asarray(state.probe_pose), float(state.force_n))
            if reason is None and state.done:
                log.status = "done"
            elif reason is None and step == steps:
                log.status = "max_steps"
            if reason is not None or log.status:
                break
            inputs = controller.inputs(state)
            action = self.policy(inputs)[0]
            if not np.isfinite(action).all():
                reason = "the policy returned a non-finite action"
                break
            target, _ = safety.clamp(controller.target(action), previous)
            log.append({k: v[0] for k, v in inputs.items()}, action, state.probe_pose, state.q)
            robot.send(target)
            previous = target
            if realtime:
                tick += self.dt
                time.sleep(max(0.0, tick - time.monotonic()))
        if reason is not None:
            log.status = f"stopped: {reason}"
        robot.stop(log.status if reason is not None else "done")
        return log
