"""The reference runtime: an exported policy drives a robot at its control rate, safely.

Each control step: read the robot's state (checked against deploy.json's joints and
robot.reports), stop if it breaks a safety limit, build the policy's inputs (the task's
robot-side controller), run the policy, turn the action into a target of the robot's tool, clamp
the target to the safety limits and send it; in real time the loop keeps the period. A policy
that returns an action chunk (1, H, A) is run again only once its H actions are sent; a diffusion
policy (`policies.deploy.diffusion`) keeps its own history and chunk and is reset per episode. The task's
controller checks the episode's session (its goal, plan) when the episode starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from policies.deploy.policy import open_policy
from policies.deploy.robot import Reports, RobotInterface, check_state
from policies.learners.base import ActionChunks
from policies.trajectory import Trajectory
from sim.errors import InputError
from sim.robot.safety import SafetyLimits, SafetyMonitor
from tasks import registry


def make_controller(spec: dict):
    """The robot-side controller the registry names for deploy.json's task (InputError naming the registered
    tasks for another)."""
    name = spec["task"]["name"]
    if name not in registry.names():
        raise InputError(f"deploy.json task {name!r}: no robot-side controller; expected one of {registry.names()}")
    return registry.deployment_part(name, "controller")(spec)


class Runtime:
    """Runs the policy exported to `folder` (engine "onnx" or "torchscript") on robots."""

    def __init__(self, folder: str | Path, engine: str = "onnx") -> None:
        self.policy = open_policy(folder, engine)  # an actor graph or a diffusion policy
        self.spec = self.policy.spec
        self.limits = SafetyLimits.from_dict(self.spec["safety"])
        self.dt = float(self.spec["control"]["dt_s"])
        self.reports = Reports.from_spec(self.spec["robot"])

    def run_episode(self, robot: RobotInterface, realtime: bool = False, max_steps: int | None = None) -> Trajectory:
        """One episode on `robot`; returns what the policy saw and did, with its end in `status`
        ("done", "max_steps" or "stopped: <reason>") and the controller's counts in `report`.
        realtime: keep the control period (a real robot); otherwise step as fast as the robot
        answers (the simulator). A failed robot link (protocol error, timeout, disconnect) or an
        invalid robot state stops the robot and the episode with its reason; any other error stops
        the robot before it propagates."""
        log = Trajectory()
        try:
            reason = self._drive(robot, log, int(max_steps or self.spec["control"]["episode_steps"]), realtime)
        except (OSError, InputError) as err:  # OSError: ProtocolError, ConnectionError, TimeoutError
            reason = str(err)
        except BaseException:
            _stop_quietly(robot, "the runtime failed")
            raise
        if reason is not None:
            log.status = f"stopped: {reason}"
        _stop_quietly(robot, log.status if reason is not None else "done")
        return log

    def _drive(self, robot: RobotInterface, log: Trajectory, steps: int, realtime: bool) -> str | None:
        """The control loop of `run_episode`: fills `log` (and its status on a normal end);
        returns why the robot must stop, or None."""
        dof, reports = len(self.spec["robot"]["joints"]), self.reports
        controller = make_controller(self.spec)
        log.report = getattr(controller, "report", {})  # the controller's own counts, kept up to date
        session = robot.start()
        state = check_state(robot.read(), dof, reports)
        controller.start(session, state)  # InputError where the session lacks what the policy needs
        safety = SafetyMonitor(self.limits, session.anchor_m, self.dt)
        self.policy.reset()  # a diffusion policy starts the episode's observation history
        policy = ActionChunks(self.policy)  # a chunk (1, H, A) is kept and executed one action per control step
        previous, tick = np.asarray(state.probe_pose, np.float32), time.monotonic()
        for step in range(steps + 1):
            if step:
                state = check_state(robot.read(), dof, reports)
                controller.observe(state)
            pose = np.asarray(state.probe_pose)
            reason = safety.check(np.asarray(state.q), pose, float(state.force_n), state.signals)
            if reason is not None:
                return reason
            if state.done or step == steps:
                log.status = "done" if state.done else "max_steps"
                return None
            inputs = controller.inputs(state)
            action = policy(inputs)[0]
            if not np.isfinite(action).all():
                return "the policy returned a non-finite action"
            target, _ = safety.clamp(controller.target(action), previous)
            log.append({k: v[0] for k, v in inputs.items()}, action, state.probe_pose, state.q)
            robot.send(target)
            previous = target
            if realtime:
                tick += self.dt
                time.sleep(max(0.0, tick - time.monotonic()))


def _stop_quietly(robot: RobotInterface, reason: str) -> None:
    """Command the robot to stop, as far as its link still works."""
    try:
        robot.stop(reason)
    except OSError:
        pass  # the link is gone: the robot PC stops on its own when the bridge fails
