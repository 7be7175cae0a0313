"""`PpoLagrangian`: rsl-rl's PPO with a cost critic and Lagrange multipliers (learner=ppo_lag).

rsl-rl builds it by its `class_name` (agent.algorithm.class_name:
"policies.learners.ppo_lagrangian:PpoLagrangian"); it extends rsl-rl's PPO by subclassing.

Beside the reward critic it trains a cost critic (the same observation set, "critic", and model
class; one output per constrained cost) on the environment's per-step costs (extras["costs"],
time-outs bootstrapped with the cost value like rewards), with its own GAE. Each iteration, before
the policy update, the multipliers (`policies.learners.lagrange.PidLagrangian`) are updated from the
mean episode cost of the last `cost_window` finished episodes (extras["log"]["Cost/<name>"], the
environment's undiscounted per-episode sums) against `cost_limits`, and the policy's advantages
become (A_r - sum_k lambda_k A_c,k) / (1 + sum_k lambda_k): A_r rsl-rl's normalised reward
advantages, A_c the cost advantages centred (not scaled, so lambda weighs a cost's units, as Safety
Gym's and OmniSafe's PPO-Lagrangian do). With every multiplier 0 the update is PPO's own.

Under torchrun every process adds every process's finished episodes to its window and the costs of
every process to the totals, so the multipliers, which every process computes, stay equal.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from rsl_rl.algorithms import PPO
from rsl_rl.utils import reduce_gradients_in_buckets, resolve_class, resolve_optimizer
from tensordict import TensorDict

from policies.learners.lagrange import CostWindow, PidLagrangian
from sim.errors import InputError


class PpoLagrangian(PPO):
    """PPO under episode-cost constraints.

    cost_limits: {cost name: limit per episode, in the cost's units}; lagrangian: `PidLagrangian`'s
    gains {kp, ki, kd, smoothing, initial}; cost_window: finished episodes the measured episode cost
    averages; cost_value_loss_coef: the cost critic's loss weight; cost_gamma, cost_lam: the cost
    returns' discount and GAE lambda (None: the reward's gamma and lam). The other arguments are PPO's.
    """

    def __init__(
        self,
        actor,
        critic,
        storage,
        cost_limits: dict[str, float] | None = None,
        lagrangian: dict | None = None,
        cost_window: int = 256,
        cost_value_loss_coef: float = 1.0,
        cost_gamma: float | None = None,
        cost_lam: float | None = None,
        **ppo: object,
    ) -> None:
        super().__init__(actor, critic, storage, **ppo)
        if not cost_limits:
            raise InputError("agent.algorithm.cost_limits: expected {cost name: limit per episode}, got none")
        if self.normalize_advantage_per_mini_batch:
            raise InputError(
                "agent.algorithm.normalize_advantage_per_mini_batch: expected false for PpoLagrangian "
                "(the reward and cost advantages are combined once per rollout), got true"
            )
        if actor.is_recurrent or critic.is_recurrent:
            raise InputError(
                "agent.actor / agent.critic: expected feed-forward models for PpoLagrangian, got recurrent"
            )
        self.cost_names = list(cost_limits)
        limits = torch.tensor([float(cost_limits[n]) for n in self.cost_names], device=self.device)
        self.lagrangian = PidLagrangian(limits, **(lagrangian or {}))
        self.window = CostWindow(cost_window, len(self.cost_names), self.device)
        self.cost_value_loss_coef = cost_value_loss_coef
        self.cost_gamma = self.gamma if cost_gamma is None else cost_gamma
        self.cost_lam = self.lam if cost_lam is None else cost_lam
        self.cost_total = torch.zeros(len(self.cost_names), device=self.device)  # every cost since the start
        self.steps_total = torch.zeros((), dtype=torch.long, device=self.device)  # env steps since the start
        t, n, k = storage.num_transitions_per_env, storage.num_envs, len(self.cost_names)
        self.costs = torch.zeros(t, n, k, device=self.device)  # per step, time-outs bootstrapped
        self.cost_values = torch.zeros(t, n, k, device=self.device)
        self.cost_returns = torch.zeros(t, n, k, device=self.device)
        self.cost_advantages = torch.zeros(t, n, k, device=self.device)
        self._step_cost_values: torch.Tensor | None = None
        self._ended: list[torch.Tensor] = []  # (M, K) episode costs finished in this rollout
        self._rollout_cost = torch.zeros(k, device=self.device)  # (K,) this rollout's costs
        self.cost_critic: nn.Module | None = None  # attached by construct_algorithm

    # -- construction

    @staticmethod
    def construct_algorithm(obs: TensorDict, env, cfg: dict, device: str) -> PpoLagrangian:
        """PPO's construction (cfg["algorithm"]["class_name"] names this class), then the cost critic:
        the reward critic's model class and settings on the same observation set, one output per
        cost. InputError if a cost limit names a cost the environment does not report."""
        alg = PPO.construct_algorithm(obs, env, cfg, device)
        if not isinstance(alg, PpoLagrangian):
            raise InputError(
                "agent.algorithm.class_name: expected policies.learners.ppo_lagrangian:PpoLagrangian (or a subclass), "
                f"got {cfg['algorithm']['class_name']!r}"
            )
        known = dict(getattr(env, "cost_units", {}))
        unknown = [n for n in alg.cost_names if n not in known]
        if unknown:
            raise InputError(
                f"agent.algorithm.cost_limits: expected costs the environment reports ({sorted(known)}), got {unknown}"
            )
        critic_class, critic_cfg = resolve_class(cfg["critic"])  # a fresh copy of the reward critic's settings
        alg.attach_cost_critic(critic_class(obs, cfg["obs_groups"], "critic", len(alg.cost_names), **critic_cfg))
        return alg

    def attach_cost_critic(self, cost_critic: nn.Module) -> None:
        """Use cost_critic (observations -> (N, K) cost values), with its own optimiser."""
        self.cost_critic = cost_critic.to(self.device)
        self.cost_optimizer = resolve_optimizer("adam")(self.cost_critic.parameters(), lr=self.learning_rate)

    # -- rollout

    def act(self, obs: TensorDict) -> torch.Tensor:
        actions = super().act(obs)
        self._step_cost_values = self.cost_critic(obs).detach()
        return actions

    def process_env_step(
        self, obs: TensorDict, rewards: torch.Tensor, dones: torch.Tensor, extras: dict[str, torch.Tensor]
    ) -> None:
        step = self.storage.step
        costs = torch.stack([extras["costs"][n].to(self.device).float() for n in self.cost_names], -1)
        self._rollout_cost += costs.sum(0)
        bootstrapped = costs
        if "time_outs" in extras:  # a truncated episode's cost goes on: its value, as PPO does for rewards
            time_outs = extras["time_outs"].to(self.device).float()[:, None]
            bootstrapped = costs + self.cost_gamma * self._step_cost_values * time_outs
        self.costs[step] = bootstrapped
        self.cost_values[step] = self._step_cost_values
        log = extras.get("log") or {}
        if all(f"Cost/{n}" in log for n in self.cost_names):
            ended = torch.stack([log[f"Cost/{n}"].to(self.device).float().reshape(-1) for n in self.cost_names], -1)
            if len(ended):
                self._ended.append(ended)
        super().process_env_step(obs, rewards, dones, extras)

    def compute_returns(self, obs: TensorDict) -> None:
        """Reward returns and advantages (rsl-rl's), cost returns and advantages, the multipliers'
        update from the finished episodes, and the combined advantages the policy update uses."""
        super().compute_returns(obs)
        st = self.storage
        last = self.cost_critic(obs).detach()
        advantage = torch.zeros_like(last)
        for step in reversed(range(st.num_transitions_per_env)):
            next_values = last if step == st.num_transitions_per_env - 1 else self.cost_values[step + 1]
            alive = 1.0 - st.dones[step].float()
            delta = self.costs[step] + alive * self.cost_gamma * next_values - self.cost_values[step]
            advantage = delta + alive * self.cost_gamma * self.cost_lam * advantage
            self.cost_returns[step] = advantage + self.cost_values[step]
        self.cost_advantages = self.cost_returns - self.cost_values
        self._update_multipliers()
        lam = self.lagrangian.multiplier
        centred = self.cost_advantages - self.cost_advantages.mean((0, 1))
        st.advantages = (st.advantages - (centred * lam).sum(-1, keepdim=True)) / (1.0 + lam.sum())

    def _update_multipliers(self) -> None:
        """Add this rollout's finished episodes (every process's) to the window, and update the
        multipliers from its mean if it holds any."""
        ended = torch.cat(self._ended) if self._ended else torch.zeros(0, len(self.cost_names), device=self.device)
        rollout_cost, steps = self._rollout_cost.clone(), self.storage.num_envs * self.storage.num_transitions_per_env
        self._ended, self._rollout_cost = [], torch.zeros_like(self._rollout_cost)
        if self.is_multi_gpu:
            parts: list = [None] * self.gpu_world_size
            torch.distributed.all_gather_object(parts, ended.cpu())
            ended = torch.cat(parts).to(self.device)
            torch.distributed.all_reduce(rollout_cost)
            steps *= self.gpu_world_size
        self.cost_total += rollout_cost
        self.steps_total += steps
        self.window.add(ended)
        if int(self.window.count):
            self.lagrangian.update(self.window.mean())

    # -- update

    def update(self) -> dict[str, float]:
        """PPO's update of the actor and reward critic on the combined advantages, then the cost critic's."""
        losses = super().update()
        losses["cost_value"] = self._update_cost_critic()
        return losses

    def _update_cost_critic(self) -> float:
        """Fit the cost critic to the cost returns (PPO's clipped value loss, epochs and mini-batches);
        returns the mean loss."""
        st = self.storage
        obs = st.observations.flatten(0, 1)
        values, returns = self.cost_values.flatten(0, 1), self.cost_returns.flatten(0, 1)
        size = len(values) // self.num_mini_batches
        total = 0.0
        for _ in range(self.num_learning_epochs):
            order = torch.randperm(size * self.num_mini_batches, device=self.device)
            for i in range(self.num_mini_batches):
                idx = order[i * size : (i + 1) * size]
                predicted = self.cost_critic(obs[idx])
                if self.use_clipped_value_loss:
                    clipped = values[idx] + (predicted - values[idx]).clamp(-self.clip_param, self.clip_param)
                    loss = torch.max((predicted - returns[idx]).pow(2), (clipped - returns[idx]).pow(2)).mean()
                else:
                    loss = (predicted - returns[idx]).pow(2).mean()
                self.cost_optimizer.zero_grad()
                (self.cost_value_loss_coef * loss).backward()
                if self.is_multi_gpu:
                    reduce_gradients_in_buckets(
                        self.cost_critic.parameters(), self.gpu_world_size, self.grad_reduce_bucket_mb
                    )
                nn.utils.clip_grad_norm_(self.cost_critic.parameters(), self.max_grad_norm)
                for group in self.cost_optimizer.param_groups:
                    group["lr"] = self.learning_rate  # PPO's adaptive rate
                self.cost_optimizer.step()
                total += loss.item()
        self.cost_critic.update_normalization(obs)
        return total / (self.num_learning_epochs * self.num_mini_batches)

    # -- what is logged

    def constraint_log(self) -> dict[str, float]:
        """{"Constraint/<statistic>/<cost>": value}: the multiplier, the window's mean episode cost,
        the cost rate (cost per environment step since the start), the fraction of the window's
        episodes with any cost, and the limit."""
        steps = max(int(self.steps_total), 1)
        stats = {
            "lambda": self.lagrangian.multiplier,
            "episode_cost": self.window.mean(),
            "cost_rate": self.cost_total / steps,
            "violation_fraction": self.window.violation_fraction(),
            "limit": self.lagrangian.limits,
        }
        return {
            f"Constraint/{key}/{name}": float(values[k])
            for key, values in stats.items()
            for k, name in enumerate(self.cost_names)
        }

    # -- modes, checkpoints, processes

    def train_mode(self) -> None:
        super().train_mode()
        self.cost_critic.train()

    def eval_mode(self) -> None:
        super().eval_mode()
        self.cost_critic.eval()

    def save(self) -> dict:
        state = super().save()
        state["cost_critic_state_dict"] = self.cost_critic.state_dict()
        state["cost_critic_optimizer_state_dict"] = self.cost_optimizer.state_dict()
        state["lagrangian_state_dict"] = {
            **{f"multiplier.{k}": v for k, v in self.lagrangian.state_dict().items()},
            **{f"window.{k}": v for k, v in self.window.state_dict().items()},
            "cost_total": self.cost_total.clone(),
            "steps_total": self.steps_total.clone(),
        }
        return state

    def load(self, loaded_dict: dict, load_cfg: dict | None, strict: bool) -> bool:
        iteration = super().load(loaded_dict, load_cfg, strict)
        if load_cfg is None or load_cfg.get("critic"):
            self.cost_critic.load_state_dict(loaded_dict["cost_critic_state_dict"], strict=strict)
        if load_cfg is None or load_cfg.get("optimizer"):
            self.cost_optimizer.load_state_dict(loaded_dict["cost_critic_optimizer_state_dict"])
            state = loaded_dict["lagrangian_state_dict"]
            part = lambda prefix: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
            self.lagrangian.load_state_dict(part("multiplier."))
            self.window.load_state_dict(part("window."))
            self.cost_total.copy_(state["cost_total"])
            self.steps_total.copy_(state["steps_total"])
        return iteration

    def broadcast_parameters(self) -> None:
        super().broadcast_parameters()
        for tensor in self.cost_critic.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
