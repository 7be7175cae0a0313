"""The Lagrange multipliers of a constrained learner and the episode costs they are driven by.

`PidLagrangian` holds one multiplier per constrained cost, updated once per training iteration
from the measured (undiscounted) episode cost J of recently finished episodes against its limit d,
in the PID form of Stooke, Achiam and Abbeel (2020, "Responsive safety in reinforcement learning
by PID Lagrangian methods", Algorithm 2):

    error     = J_smooth - d                  (J smoothed by an exponential average for P and D)
    integral  = max(0, integral + ki (J - d))
    lambda    = max(0, kp error + integral + kd max(0, J_smooth - J_smooth_previous))

With kp = kd = 0 it is plain gradient ascent on the multiplier, lambda <- max(0, lambda + ki (J - d));
with every gain 0 the multiplier stays at its initial value. `CostWindow` keeps the episode costs
of the last `size` finished episodes that J is the mean of. Both keep their state in tensors, so a
checkpoint restores them exactly.
"""

from __future__ import annotations

import torch


class CostWindow:
    """The episode costs (K per episode, in each cost's units) of the last `size` finished episodes."""

    def __init__(self, size: int, costs: int, device: str | torch.device = "cpu") -> None:
        self.values = torch.zeros(size, costs, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)  # episodes held, at most size
        self.position = torch.zeros((), dtype=torch.long, device=device)  # where the next episode goes

    def add(self, episodes: torch.Tensor) -> None:
        """Append finished episodes' costs (M, K), oldest first; the oldest held ones make room."""
        size = self.values.shape[0]
        episodes = episodes[-size:]
        slots = (self.position + torch.arange(len(episodes), device=self.values.device)) % size
        self.values[slots] = episodes.to(self.values)
        self.position = (self.position + len(episodes)) % size
        self.count = (self.count + len(episodes)).clamp(max=size)

    def held(self) -> torch.Tensor:
        """(M, K) the episodes held (in slot order; M = count)."""
        return self.values[: int(self.count)]

    def mean(self) -> torch.Tensor:
        """(K,) mean episode cost of the episodes held (0 without any)."""
        return self.held().mean(0) if int(self.count) else torch.zeros_like(self.values[0])

    def violation_fraction(self) -> torch.Tensor:
        """(K,) fraction of the held episodes with any cost (a positive episode sum; 0 without any)."""
        return (self.held() > 0).float().mean(0) if int(self.count) else torch.zeros_like(self.values[0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.clone(), "count": self.count.clone(), "position": self.position.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values.copy_(state["values"])
        self.count.copy_(state["count"])
        self.position.copy_(state["position"])


class PidLagrangian:
    """Lagrange multipliers (K,) for cost limits (K,) (each cost's units per episode).

    kp, ki, kd: the gains (>= 0) on the cost's excess over its limit (per unit of cost: lambda is
    dimensionless, so the gains have units of 1 / cost); smoothing in [0, 1): the weight of the
    previous smoothed cost in the exponential average the P and D terms use (0: the last measurement);
    initial: the multiplier (and integral) before any update, >= 0.
    """

    def __init__(
        self,
        limits: torch.Tensor,
        kp: float = 0.0,
        ki: float = 0.05,
        kd: float = 0.0,
        smoothing: float = 0.0,
        initial: float = 0.0,
    ) -> None:
        self.limits = limits.float()
        self.kp, self.ki, self.kd, self.smoothing = kp, ki, kd, smoothing
        self.integral = torch.full_like(self.limits, initial)
        self.multiplier = torch.full_like(self.limits, initial)
        self.smoothed = torch.zeros_like(self.limits)
        self.updates = torch.zeros((), dtype=torch.long, device=self.limits.device)

    def update(self, cost: torch.Tensor) -> torch.Tensor:
        """The multipliers (K,) after measuring episode costs cost (K,) this iteration."""
        cost = cost.to(self.limits)
        first = self.updates == 0
        previous = torch.where(first, cost, self.smoothed)
        smoothed = torch.where(first, cost, self.smoothing * self.smoothed + (1.0 - self.smoothing) * cost)
        self.integral = (self.integral + self.ki * (cost - self.limits)).clamp_min(0.0)
        derivative = (smoothed - previous).clamp_min(0.0)
        self.multiplier = (self.kp * (smoothed - self.limits) + self.integral + self.kd * derivative).clamp_min(0.0)
        self.smoothed = smoothed
        self.updates = self.updates + 1
        return self.multiplier

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "multiplier": self.multiplier.clone(),
            "integral": self.integral.clone(),
            "smoothed": self.smoothed.clone(),
            "updates": self.updates.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.multiplier = state["multiplier"].to(self.limits)
        self.integral = state["integral"].to(self.limits)
        self.smoothed = state["smoothed"].to(self.limits)
        self.updates = state["updates"].to(self.updates)
