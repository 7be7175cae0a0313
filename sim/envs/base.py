"""`BatchedEnv`: N environments stepped together on one device, with per-environment resets.

A task subclasses it and fills in four hooks over batched state tensors (no Python loop over
environments): `_apply_action`, `_evaluate`, `_reset_idx` and `get_observations` (and `_costs`
for a constrained task). The base class sanitises actions, sums the task's weighted reward
terms, counts episode steps and per-episode sums of the terms and costs, ends episodes
(terminated or truncated), resets the ended environments in the same step and keeps all
randomness in one seeded generator, so one seed gives the same rollouts on CPU. `state_dict` /
`load_state_dict` capture everything a rollout and its logs depend on, for exact resume. Stepping,
resetting and loading run in inference mode (no autograd), so state created during a learner's
inference-mode rollout can be updated in place anywhere else.
"""

from __future__ import annotations

import abc

import torch
from tensordict import TensorDict

from sim.backends.protocol import SceneBackend
from sim.backends.scene import SceneCfg
from sim.config import build
from sim.envs.snapshot import EnvSnapshot
from sim.envs.spaces import Space
from sim.envs.terms import RewardTerm, total
from sim.errors import InputError, require, require_int


def check_device(device: torch.device | str) -> str:
    """`device` if torch can use it here; InputError naming it otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device {device!r}: expected cpu, cuda or cuda:<index> ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: expected a CUDA index below {torch.cuda.device_count()} (the GPUs here)")
    return str(dev)


class BatchedEnv(abc.ABC):
    """Base of sonolab's batched environments.

    Subclasses set `num_actions`, `config_class`, `max_episode_length` (steps), `dt` (the control
    period, s), `cfg` (the task's config, whose `name` is its registered name in `tasks.registry`)
    and `patients` (`_configure` sets these four from a config with episode_steps and control_hz),
    `scene` (the backend's `sim.backends.protocol.SceneBackend` of the scene the
    task's `scene_cfg(cfg)` describes: generic tools read its arms, base poses and tools) and
    `state_names` (attributes holding per-environment state tensors), and call
    `super().__init__` first. They declare, before their first reset: `reward_terms` (the reward
    as weighted terms, `sim.envs.terms`), `cost_units` ({cost name: unit} of `_costs`),
    `observation_spaces` ({group: `Space`} of `get_observations`) and `action_space` (a `Space`
    of shape (num_actions,)).
    `step(actions)` returns (obs TensorDict, reward (N,), terminated (N,) bool, truncated (N,) bool,
    extras) where extras["reward_terms"] holds this step's weighted reward terms {name: (N,)}
    (they add up to reward), extras["costs"] this step's costs {name: (N,)} in `cost_units`,
    extras["log"] per-episode values of the environments that just ended: the task's metrics as
    "Episode/<name>", each reward term's episode sum as "Reward/<name>" (they add up to the
    episode's return) and each cost's as "Cost/<name>", (M,) each; and extras["final_obs"] (when
    `keep_final_obs`) their observations before the reset.
    """

    num_actions: int
    config_class: type
    max_episode_length: int
    state_names: tuple[str, ...] = ()
    reward_terms: tuple[RewardTerm, ...]
    cost_units: dict[str, str] = {}
    observation_spaces: dict[str, Space]
    action_space: Space
    scene: SceneBackend

    @staticmethod
    @abc.abstractmethod
    def scene_cfg(cfg) -> SceneCfg:
        """The scene (named robots and tools) the task with config `cfg` runs in; an Isaac Lab
        environment builds its physics world from it before the task exists."""

    def __init__(self, num_envs: int, device: torch.device | str, seed: int) -> None:
        self.num_envs = require_int(num_envs, "num_envs", 1)
        self.device = torch.device(check_device(device))
        self.seed = require_int(seed, "seed", 0)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.last_action_excess = torch.zeros(num_envs, device=self.device)  # set by each step
        self.keep_final_obs = False

    def _configure(self, cfg, patients) -> None:
        """Set `cfg` (the task's config class built from cfg, a mapping or an instance, then checked by
        the task's `_check_cfg(cfg)`), `patients` (at least one), `max_episode_length` (cfg.episode_steps)
        and `dt` (1 / cfg.control_hz); InputError naming the setting that is wrong."""
        cfg = build(self.config_class, cfg, "task config")
        self._check_cfg(cfg)
        require(len(patients) > 0, "patients", "at least one patient", "none")
        self.cfg, self.patients = cfg, list(patients)
        self.max_episode_length = cfg.episode_steps
        self.dt = 1.0 / cfg.control_hz

    @staticmethod
    def _check_cfg(cfg) -> None:
        """InputError naming the first setting of the task config `cfg` that is out of range."""

    # -- hooks

    @abc.abstractmethod
    def _apply_action(self, actions: torch.Tensor) -> None:
        """Advance every environment by one control step under actions (N, A) in [-1, 1]."""

    @abc.abstractmethod
    def _evaluate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted reward terms {name: (N,)} (`sim.envs.terms.weighted` over `reward_terms`),
        terminated (N,) bool and per-environment episode metrics {name: (N,)}, reported for the
        environments whose episode ends this step."""

    def _costs(self) -> dict[str, torch.Tensor]:
        """This step's costs {name: (N,) float32 >= 0, in `cost_units`} for constrained learners,
        read after `_evaluate`; a task without constraints has none."""
        return {}

    @abc.abstractmethod
    def _reset_idx(self, env_ids: torch.Tensor) -> None:
        """Start new episodes in environments env_ids (M,) int64."""

    @abc.abstractmethod
    def get_observations(self) -> TensorDict:
        """Observation groups for every environment, computed from the state alone."""

    # -- what generic tools read and drive (viewer, videos, trajectories, the simulated robot)

    @abc.abstractmethod
    def snapshot(self, env_ids: torch.Tensor | None = None) -> EnvSnapshot:
        """The state of environments env_ids (M,) int64 (None: all) as an `EnvSnapshot` (copies)."""

    @abc.abstractmethod
    def drive_tools(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """One control step toward tool targets {tool: (N, 7) pose, patient frame} instead of
        actions (an external controller: `policies.deploy.sim_robot`): counts the step and
        evaluates the task like `step`, but resets nothing. Returns (N,) bool: the episode is over
        (the task's termination or its time limit)."""

    # -- API

    def check_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (N, A) as float32 in [-1, 1]: NaN becomes 0, +-inf and huge values saturate."""
        if not isinstance(actions, torch.Tensor):
            raise InputError(
                f"actions: expected a torch.Tensor of shape ({self.num_envs}, "
                f"{self.num_actions}), got {type(actions).__name__}"
            )
        if actions.shape != (self.num_envs, self.num_actions):
            raise InputError(
                f"actions: expected shape ({self.num_envs}, {self.num_actions}), got {tuple(actions.shape)}"
            )
        if not (actions.is_floating_point() or actions.dtype in (torch.int32, torch.int64)):
            raise InputError(f"actions: expected a real dtype, got {actions.dtype}")
        actions = actions.to(self.device, torch.float32)
        return torch.nan_to_num(actions, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)

    @torch.inference_mode()
    def reset(self) -> TensorDict:
        """Start new episodes everywhere; returns the observations."""
        self.episode_length_buf.zero_()
        # (N, terms + costs): each episode's running sums, logged when it ends
        self.episode_sums = torch.zeros(
            self.num_envs, len(self.reward_terms) + len(self.cost_units), device=self.device
        )
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        return self.get_observations()

    @staticmethod
    def action_excess(actions: torch.Tensor) -> torch.Tensor:
        """(N,) sum of squared overshoot of the raw actions beyond [-1, 1] (overshoot capped at 9;
        NaN counts as 0). Learners with unbounded Gaussian policies get no signal from the clamp;
        tasks can penalise this so the policy keeps its means where the clamp does not flatten them."""
        finite = torch.nan_to_num(actions.float(), nan=0.0, posinf=10.0, neginf=-10.0).clamp(-10.0, 10.0)
        return (finite.abs() - 1.0).clamp_min(0.0).square().sum(-1)

    @torch.inference_mode()
    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        clean = self.check_actions(actions)
        self.last_action_excess = self.action_excess(actions.to(self.device))
        actions = clean
        self._apply_action(actions)
        self.episode_length_buf += 1
        terms, terminated, metrics = self._evaluate()
        costs = self._costs()
        reward = total(terms)
        self.episode_sums += torch.stack(
            [terms[t.name] for t in self.reward_terms] + [costs[c] for c in self.cost_units], -1
        )
        truncated = (self.episode_length_buf >= self.max_episode_length) & ~terminated
        done = terminated | truncated
        ids = done.nonzero()[:, 0]
        extras: dict = {"time_outs": truncated, "log": {}, "reward_terms": terms, "costs": costs}
        if len(ids):
            extras["log"] = {f"Episode/{k}": v[ids].float() for k, v in metrics.items()}
            extras["log"].update(self._episode_sums_log(ids))
            if self.keep_final_obs:
                extras["final_obs"] = self.get_observations()
            self.episode_length_buf[ids] = 0
            self._reset_idx(ids)
        return self.get_observations(), reward, terminated, truncated, extras

    def _episode_sums_log(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"Reward/<term>" and "Cost/<name>": (M,)} episode sums of environments ids (M,), whose
        sums then restart."""
        names = [f"Reward/{t.name}" for t in self.reward_terms] + [f"Cost/{c}" for c in self.cost_units]
        sums = self.episode_sums[ids]
        self.episode_sums[ids] = 0.0
        return {name: sums[:, j] for j, name in enumerate(names)}

    # -- exact resume

    def state_dict(self) -> dict:
        """Everything later steps depend on: state tensors, episode counters, the generator and
        the backend's own state ("scene": a physics engine's velocities and drive targets)."""
        state = {name: getattr(self, name).clone() for name in (*self.state_names, "episode_sums")}
        state["episode_length_buf"] = self.episode_length_buf.clone()
        state["generator"] = self.generator.get_state()
        state["scene"] = self.scene.state_dict()
        return state

    @torch.inference_mode()
    def load_state_dict(self, state: dict) -> None:
        expected = {*self.state_names, "episode_sums", "episode_length_buf", "generator", "scene"}
        if set(state) != expected:
            raise InputError(f"environment state: expected keys {sorted(expected)}, got {sorted(state)}")
        for name in (*self.state_names, "episode_sums"):
            current = getattr(self, name)
            if state[name].shape != current.shape:
                raise InputError(
                    f"environment state {name!r}: expected shape {tuple(current.shape)}, got {tuple(state[name].shape)}"
                )
            current.copy_(state[name])
        self.episode_length_buf.copy_(state["episode_length_buf"])
        self.generator.set_state(state["generator"])
        self.scene.load_state_dict(state["scene"])
