"""The learner interface: what scripts/train.py, play.py and export.py ask of a learner.

A learner trains a policy for a task environment, loads the trained policy from a checkpoint and
exports it for robots. Its settings per task are the `agent` group (conf/agent/<task>/<learner>.yaml).
A policy maps observations to actions (N, A) in [-1, 1], or to an action chunk (N, H, A): the next
H control steps' actions, which `ActionChunks` executes one per step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from sim.errors import require

if TYPE_CHECKING:  # the runtime imports ActionChunks on robot PCs: no torch or omegaconf needed there
    from omegaconf import DictConfig

    from sim.envs.base import BatchedEnv

# observations (a TensorDict of (N, ...) groups, or a dict of arrays) -> actions (N, A) or a chunk (N, H, A)
Policy = Callable[[Any], Any]


@dataclass
class TrainedPolicy:
    """A learner's deterministic policy loaded from a checkpoint: `act` (observations -> actions
    (N, A) or chunks (N, H, A)), the observation groups it reads, in its exported graph's input
    order, the training iteration of its checkpoint, and the episode-cost limits it was trained
    under ({cost name: limit per episode}; empty for an unconstrained learner)."""

    act: Policy
    inputs: list[str]
    iteration: int
    cost_limits: dict[str, float] = field(default_factory=dict)

    def __call__(self, obs: Any) -> Any:
        return self.act(obs)


class Learner(ABC):
    """A way to learn a policy. Register a subclass by name in `policies.learners.LEARNERS`; its
    settings for each task go in conf/agent/<task>/<name>.yaml and conf/learner/<name>.yaml selects it."""

    name: ClassVar[str]

    @abstractmethod
    def check_agent(self, agent: Mapping | None, num_envs: int) -> None:
        """InputError naming the first bad key of the agent settings for `num_envs` environments."""

    @abstractmethod
    def train(self, cfg: DictConfig, env: BatchedEnv, run_dir: Path, checkpoint: Path | None) -> None:
        """Train cfg's run in run_dir (checkpoints, logs) up to its last iteration: from scratch, or
        continuing exactly (bit for bit on CPU) from `checkpoint` of this run."""

    @abstractmethod
    def load_policy(self, cfg: DictConfig, env: BatchedEnv, checkpoint: Path) -> TrainedPolicy:
        """The deterministic policy of `checkpoint` for env (InputError for a checkpoint of another
        task or observation layout, before any weights are used)."""

    @abstractmethod
    def export(self, policy: TrainedPolicy, env: BatchedEnv, folder: Path, spec: dict, samples: int) -> Path:
        """Write `folder` for robots (policy.onnx, policy.pt, deploy.json with `spec`, samples.npz
        with `samples` recorded steps of env, manifest.json; see policies.export) and return it."""


class ActionChunks:
    """Runs `policy` one action per control step, whether it returns actions or action chunks.

    Each call returns actions (N, A) (numpy or torch, as the policy returns them): a policy's
    (N, A) answer as it is; of a chunk (N, H, A), the next unused step, the policy being queried
    again (with that call's observations) only once the chunk is used up. One instance per
    rollout: a fresh one starts without a chunk.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy, self.chunk, self.used = policy, None, 0

    def __call__(self, obs: Any) -> Any:
        if self.chunk is None or self.used == self.chunk.shape[1]:
            actions = self.policy(obs)
            if actions.ndim == 2:
                return actions
            require(
                actions.ndim == 3 and actions.shape[1] >= 1,
                "policy output",
                "actions (N, A) or an action chunk (N, H, A), H >= 1",
                tuple(actions.shape),
            )
            self.chunk, self.used = actions, 0
        self.used += 1
        return self.chunk[:, self.used - 1]
