"""Record demonstrations: a policy runs in N environments at once, finished episodes go to a dataset.

Per control step t of an episode the dataset holds what the policy saw before acting (the state
and images of `policies.demos.frames`), the action (A,) it took, and the step's outcome:
`next.reward`, `next.done`, `next.success` (true on the last step of a successful episode) and
`next.cost.<name>` per cost the task reports. Beside them, per step, what a real robot's log has
(the Open-H-Embodiment robotic-ultrasound names):

- `observation.meta.tool_pose.<tool>` (7,): each tool's pose x, y, z (m), qx, qy, qz, qw in the
  patient frame;
- `observation.meta.force_torque` (6,): the probe's contact force and torque in the probe frame.
  The simulator models the normal force only, so this is (0, 0, F, 0, 0, 0) with F in newtons;
- `observation.meta.probe_type`, `observation.meta.probe_acquisition_param` (centre MHz, elements,
  depth cm, linear FOV mm, convex radius mm, convex FOV deg; 0 where the kind has none) and
  `observation.meta.prob_cali_mtx` (7,): the image frame in the probe's tool frame as xyz +
  quaternion, the identity here (the simulated image plane is the probe frame's).

Per episode the episodes table holds the patient, the goal pose (tasks with one) and the task's
episode metrics and cost sums (`sonolab/<name>`). Episodes are kept as `keep` says: "success"
keeps the successful ones, "all" keeps every episode, failed ones in the dataset's "failure"
split. Recording stops once `episodes` are kept. Episodes are admitted in the order they start, no
more at a time than could still be kept, and an admitted episode is kept (or not) whatever its
length: keeping the first episodes to end would favour short, easy ones.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from policies.demos.frames import STATE, FrameLayout
from policies.demos.lerobot import DatasetWriter
from policies.learners.base import ActionChunks
from policies.settings import KEEP
from sim.envs.base import BatchedEnv
from sim.errors import InputError, require
from sim.ultrasound.probe import ProbeSpec

FAILURE_SPLIT = "failure"
PROBE = "probe"  # the tool whose contact force is the Open-H force_torque
CALIBRATION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # xyz + quaternion (x, y, z, w): the identity
EPISODE, COST = "Episode/", "Cost/"


def acquisition(probe: ProbeSpec) -> list[float]:
    """Open-H's probe_acquisition_param: [centre MHz, elements (scan lines), depth cm, linear FOV mm,
    convex radius mm, convex FOV deg], 0 for what the probe's kind does not have."""
    linear, convex = probe.kind == "linear", probe.kind == "convex"
    return [
        float(probe.frequency_mhz),
        float(probe.n_lines),
        probe.depth_m * 100.0,
        probe.width_m * 1000.0 if linear else 0.0,
        probe.radius_m * 1000.0 if convex else 0.0,
        0.0 if linear else float(probe.fov_deg),
    ]


def xyzw(poses: torch.Tensor) -> torch.Tensor:
    """Poses (..., 7) x, y, z, qw, qx, qy, qz (sonolab's order) as x, y, z, qx, qy, qz, qw (LeRobot's)."""
    return torch.cat([poses[..., :3], poses[..., 4:7], poses[..., 3:4]], -1)


def step_features(env: BatchedEnv, layout: FrameLayout) -> dict[str, dict]:
    """The LeRobot feature specs of one recorded step of `env` (besides LeRobot's defaults)."""
    vector = lambda n, names=None: {"dtype": "float32", "shape": [n], "names": names}  # noqa: E731
    features = dict(layout.features())
    features["action"] = vector(env.num_actions, list(env.action_space.names))
    features["next.reward"] = vector(1)
    features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    for name in env.cost_units:
        features[f"next.cost.{name}"] = vector(1)
    for tool in env.snapshot(torch.zeros(1, dtype=torch.long, device=env.device)).tool_poses:
        features[f"observation.meta.tool_pose.{tool}"] = vector(7, ["x", "y", "z", "qx", "qy", "qz", "qw"])
    features["observation.meta.force_torque"] = vector(6, ["fx", "fy", "fz", "tx", "ty", "tz"])
    features["observation.meta.probe_type"] = {"dtype": "string", "shape": [1], "names": None}
    features["observation.meta.probe_acquisition_param"] = vector(
        6, ["center_mhz", "elements", "depth_cm", "linear_fov_mm", "convex_radius_mm", "convex_fov_deg"]
    )
    features["observation.meta.prob_cali_mtx"] = vector(7, ["tx", "ty", "tz", "qx", "qy", "qz", "qw"])
    return features


class EpisodeBuffers:
    """Each environment's current episode, step by step, on the environment's device: per feature a
    (T, N, ...) tensor written at each environment's own step index (no loop over environments)."""

    def __init__(self, steps: int, num_envs: int, device: torch.device) -> None:
        self.steps, self.device = steps, device
        self.data: dict[str, torch.Tensor] = {}
        self.t = torch.zeros(num_envs, dtype=torch.long, device=device)  # each environment's step in its episode
        self.rows = torch.arange(num_envs, device=device)

    def write(self, values: dict[str, torch.Tensor]) -> None:
        """This step's values {feature: (N, ...)} at each environment's step index."""
        for name, value in values.items():
            if name not in self.data:
                self.data[name] = torch.zeros(self.steps, *value.shape, dtype=value.dtype, device=self.device)
            self.data[name][self.t, self.rows] = value

    def take(self, ids: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The episodes of environments `ids` (M,) that end this step: ({feature: (T, M, ...)} on the
        host, their lengths (M,)); their step counters restart."""
        lengths = (self.t[ids] + 1).cpu().numpy()
        episodes = {name: value[:, ids].cpu().numpy() for name, value in self.data.items()}
        self.t[ids] = -1  # advance() makes it 0 for the episode that the reset started
        return episodes, lengths

    def advance(self) -> None:
        self.t += 1


def step_values(layout: FrameLayout, obs, snap, constant: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the policy saw and the robot measured before acting: {feature: (N, ...)}."""
    state, images = layout.observe(obs)
    values = {STATE: state, **constant}
    if images is not None:
        values.update({name: images[:, c] for c, name in enumerate(layout.image_names)})
    for tool, pose in snap.tool_poses.items():
        values[f"observation.meta.tool_pose.{tool}"] = xyzw(pose.float())
    force = snap.tool_forces.get(PROBE, torch.zeros_like(state[:, 0]))
    values["observation.meta.force_torque"] = torch.nn.functional.pad(force.float()[:, None], (2, 3))
    return values


def add_episodes(
    env: BatchedEnv,
    writer: DatasetWriter,
    buffers: EpisodeBuffers,
    ids: torch.Tensor,
    log: dict[str, torch.Tensor],
    snap,
    keep: str,
    admitted: np.ndarray,
    probe_type: str,
) -> int:
    """Add the episodes of environments `ids` that just ended (their `log` rows, in ids' order) to
    `writer` where `admitted` (M,) bool and `keep` say so; returns how many were added. `snap`: the
    environments' snapshot before the step (patient and goal of the ending episodes)."""
    episodes, lengths = buffers.take(ids)
    metrics = {  # the episode metrics by name, the cost sums as cost.<name>
        key.removeprefix(EPISODE).replace(COST, "cost."): value.float().cpu().numpy()
        for key, value in log.items()
        if key.startswith((EPISODE, COST))
    }
    patients = snap.patient[ids].cpu().numpy()
    goals = None if snap.goal_pose is None else xyzw(snap.goal_pose[ids].float()).cpu().numpy()
    goal_names = snap.extras.get("goal_name")
    rows = ids.cpu().numpy()
    added = 0
    for j, length in enumerate(lengths):  # per finished episode: the writer takes one episode at a time
        success = bool(metrics["success"][j] > 0.5)
        if not admitted[j] or (keep == "success" and not success):
            continue
        frames = {name: value[:length, j] for name, value in episodes.items()}
        frames["observation.meta.probe_type"] = [probe_type] * int(length)
        meta = {"patient": env.patients[int(patients[j])].name, **{k: float(v[j]) for k, v in metrics.items()}}
        task = str(env.cfg.name)
        if goals is not None:
            meta["goal_pose"] = goals[j].tolist()
        if goal_names is not None:
            meta["goal"] = str(goal_names[rows[j]])
            task = f"{task}: {meta['goal']}"
        writer.add_episode(frames, task, "train" if success else FAILURE_SPLIT, meta)
        added += 1
    return added


def record(
    env: BatchedEnv,
    policy: Callable,
    layout: FrameLayout,
    writer: DatasetWriter,
    episodes: int,
    keep: str,
    probe: ProbeSpec,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run `policy` (observations -> actions (N, A), or chunks) in `env` from a fresh reset and add
    each finished episode that `keep` admits to `writer` until `episodes` are added. Returns
    {"kept", "episodes_run", "steps", "success_rate", "seconds"} (success rate over every finished
    episode; seconds from the reset until the last episode was added).
    progress(kept, run) is called after each step that finished episodes."""
    require(keep in KEEP, "keep", " or ".join(KEEP), repr(keep))
    require(isinstance(episodes, int) and episodes >= 1, "episodes", "an int >= 1", repr(episodes))
    n, policy = env.num_envs, ActionChunks(policy)
    buffers = EpisodeBuffers(env.max_episode_length, n, env.device)
    constant = {
        "observation.meta.probe_acquisition_param": torch.tensor(acquisition(probe), device=env.device),
        "observation.meta.prob_cali_mtx": torch.tensor(CALIBRATION, device=env.device),
    }
    constant = {name: value.expand(n, -1) for name, value in constant.items()}
    kept = run = successes = steps = 0
    start = time.perf_counter()
    admitted = torch.arange(n, device=env.device) < episodes  # the running episodes that may be kept
    obs = env.reset()
    with torch.inference_mode():
        while kept < episodes:
            snap = env.snapshot()
            values = step_values(layout, obs, snap, constant)
            actions = policy(obs)
            obs, reward, terminated, truncated, extras = env.step(actions)
            done = terminated | truncated
            values["action"] = actions.float()
            values["next.reward"] = reward.float()[:, None]
            values["next.done"] = done[:, None]
            for name, cost in extras["costs"].items():
                values[f"next.cost.{name}"] = cost.float()[:, None]
            ids = done.nonzero()[:, 0]
            success = torch.zeros(n, dtype=torch.bool, device=env.device)
            if len(ids):
                if EPISODE + "success" not in extras["log"]:
                    raise InputError(f"task {env.cfg.name!r}: expected an Episode/success metric to keep episodes by")
                success[ids] = extras["log"][EPISODE + "success"] > 0.5
            values["next.success"] = success[:, None]
            buffers.write(values)
            steps += 1
            if len(ids):
                ended = admitted[ids]
                kept += add_episodes(
                    env, writer, buffers, ids, extras["log"], snap, keep, ended.cpu().numpy(), probe.kind
                )
                room = episodes - kept - int(admitted.sum()) + int(ended.sum())  # the ended ones no longer run
                admitted[ids] = torch.arange(len(ids), device=env.device) < room  # the new episodes, in order
                run += len(ids)
                successes += int(success[ids].sum())
                if progress is not None:
                    progress(kept, run)
            buffers.advance()
    rate = successes / max(run, 1)
    return {
        "kept": kept,
        "episodes_run": run,
        "steps": steps,
        "success_rate": rate,
        "seconds": time.perf_counter() - start,
    }
