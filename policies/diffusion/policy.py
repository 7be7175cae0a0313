"""A diffusion policy in closed loop over N environments: observation history and action chunks.

Each call takes the environments' observations and returns one action each (N, A). Per
environment it keeps the last obs_horizon frames (`policies.demos.frames.FrameLayout.observe`,
the inputs its demonstrations were recorded with; at an episode's first step the history is that
frame repeated, as in training) and the rest of its current action chunk; the environments whose
chunk is used up or whose episode just started are planned anew, together, with one DDIM
sampling. The episode starts are read from the environment's step counters, so no done flags need
passing in. One host read per call (which environments to plan), none inside the sampler.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from policies.demos.frames import FrameLayout
from policies.diffusion.networks import DiffusionPolicyNet
from sim.envs.base import BatchedEnv


def push(history: torch.Tensor, frame: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """history (N, To, ...) shifted by one with `frame` (N, ...) appended; rows where `fresh` (N,)
    (a new episode) become `frame` repeated To times."""
    shifted = torch.cat([history[:, 1:], frame.unsqueeze(1)], 1)
    repeated = frame.unsqueeze(1).expand_as(history)
    return torch.where(fresh.view(-1, *([1] * (history.ndim - 1))), repeated, shifted)


class DiffusionController:
    """`net` (in eval mode) acting in `env` through `layout`; noise from `generator` (on env's device)."""

    def __init__(self, net: DiffusionPolicyNet, layout: FrameLayout, env: BatchedEnv, seed: int) -> None:
        self.net, self.layout, self.env = net.eval(), layout, env
        self.generator = torch.Generator(env.device).manual_seed(seed)
        n, steps, dim = env.num_envs, net.action_steps, net.action_dim
        self.chunk = torch.zeros(n, steps, dim, device=env.device)
        self.used = torch.full((n,), steps, dtype=torch.long, device=env.device)  # used up: plan at the first call
        self.state: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self.rows = torch.arange(n, device=env.device)

    def observe(self, obs: TensorDict) -> None:
        """Add this step's frame to every environment's history."""
        fresh = self.env.episode_length_buf == 0
        state, images = self.layout.observe(obs)
        to = self.net.obs_horizon
        if self.state is None:
            self.state = state.unsqueeze(1).repeat(1, to, 1)
            self.images = None if images is None else images.unsqueeze(1).repeat(1, to, 1, 1, 1)
            self.used[:] = self.net.action_steps
            return
        self.state = push(self.state, state, fresh)
        if images is not None:
            self.images = push(self.images, images, fresh)
        self.used[fresh] = self.net.action_steps  # a new episode plans from its own first frame

    def __call__(self, obs: TensorDict) -> torch.Tensor:
        """Actions (N, A) for observations (N, ...) of the environments' current step."""
        with torch.inference_mode():
            self.observe(obs)
            plan = (self.used >= self.net.action_steps).nonzero()[:, 0]
            if len(plan):
                images = None if self.images is None else self.images[plan].float() / 255.0
                self.chunk[plan] = self.net.act(self.state[plan], images, self.generator)
                self.used[plan] = 0
            actions = self.chunk[self.rows, self.used]
            self.used += 1
            return actions.clamp(-1.0, 1.0)
