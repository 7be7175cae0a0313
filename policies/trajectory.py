"""One episode of one robot or environment, step by step: what the policy saw and did.

play.py records environment 0's first episode in this form and the deployment runtime records
every episode it runs, so the two can be compared step for step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tasks import registry


@dataclass
class Trajectory:
    """Per control step t: the policy inputs {name: (...)}, the action (A,), the measured pose
    (7,) of the robot's tool and the joint angles (dof,) of the robot at which the inputs were
    taken (us_nav: the probe and its arm; us_surgery: the drill and the drill arm). status: how
    it ended."""

    inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    actions: list[np.ndarray] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)
    q: list[np.ndarray] = field(default_factory=list)
    status: str = ""
    report: dict = field(default_factory=dict)  # the runtime's: what the task's controller counted (not saved)

    def append(self, inputs: dict[str, np.ndarray], action: np.ndarray, pose: np.ndarray, q: np.ndarray) -> None:
        """One step, unbatched arrays."""
        for name, value in inputs.items():
            self.inputs.setdefault(name, []).append(np.asarray(value, np.float32))
        self.actions.append(np.asarray(action, np.float32).reshape(-1))
        self.poses.append(np.asarray(pose, np.float32).reshape(7))
        self.q.append(np.asarray(q, np.float32).reshape(-1))

    def __len__(self) -> int:
        return len(self.actions)

    def arrays(self) -> dict[str, np.ndarray]:
        """Stacked arrays: input/<name> (T, ...), actions (T, A), poses (T, 7), q (T, dof)."""
        out = {f"input/{k}": np.stack(v) for k, v in self.inputs.items()}
        out.update(
            actions=np.stack(self.actions), poses=np.stack(self.poses), q=np.stack(self.q), status=np.array(self.status)
        )
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **self.arrays())
        return path


def load_trajectory(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays `Trajectory.save` wrote."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


class Env0Recorder:
    """Records environment 0's first episode while `evaluate` runs: wrap the policy with it and
    pass `on_step` to evaluate. names: the observation groups the policy reads. The pose and
    joint angles are those the task's simulated robot reports (`tasks.registry.load_sim_robot`:
    the primary tool's and robot's of the snapshot, or the task's robot's, us_surgery's drill), as
    the deploy runtime records them."""

    def __init__(self, env, policy, names: list[str]) -> None:
        self.env, self.policy, self.names = env, policy, names
        self.reading = registry.load_sim_robot(env.cfg.name).reading
        self.trajectory = Trajectory()
        self.finished = False
        self.first = torch.zeros(1, dtype=torch.long, device=env.device)

    def __call__(self, obs):
        actions = self.policy(obs)
        if not self.finished:
            state = self.reading(self.env.snapshot(self.first))
            inputs = {n: obs[n][0].cpu().numpy() for n in self.names}
            self.trajectory.append(inputs, actions[0].cpu().numpy(), state.probe_pose, state.q)
        return actions

    def on_step(self, env) -> None:
        if not self.finished and int(env.episode_length_buf[0]) == 0:  # environment 0 was just reset
            self.finished, self.trajectory.status = True, "done"
