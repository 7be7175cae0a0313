"""`ExpertDistillation`: rsl-rl's Distillation (DAgger-style) with the task's scripted expert as the teacher.

rsl-rl's `Distillation` steps the environments with the student's own (sampled) actions, labels
every visited step with the teacher's action and regresses the student onto those labels: the
student learns on the states it reaches itself, so its mistakes are corrected where they lead
(DAgger, Ross et al. 2011). rsl-rl's teacher is a trained network loaded from a checkpoint; here it
is the task's scripted expert (`tasks.registry` TaskSpec.expert), which reads privileged
observations (for us_nav the relative goal pose in the critic group) that the student never sees.
The student is any rsl-rl model (the image actor of us_nav); it is what play, export and deploy use.
"""

from __future__ import annotations

from typing import Callable

import torch
from rsl_rl.algorithms import Distillation
from rsl_rl.env import VecEnv
from tensordict import TensorDict
from torch import nn

from tasks import registry


class ExpertTeacher(nn.Module):
    """A scripted expert (observations -> actions (N, A) in [-1, 1]) in the slot of rsl-rl's teacher
    model: not recurrent, no parameters, nothing to load."""

    is_recurrent = False

    def __init__(self, expert: Callable[[TensorDict], torch.Tensor]) -> None:
        super().__init__()
        self.expert = expert

    def forward(self, obs: TensorDict, stochastic_output: bool = False) -> torch.Tensor:
        return self.expert(obs)

    def reset(self, dones: torch.Tensor | None = None, hidden_state: object = None) -> None:
        """Nothing to reset: the expert keeps no state between steps."""

    def get_hidden_state(self) -> None:
        return None

    def detach_hidden_state(self, dones: torch.Tensor | None = None) -> None:
        """No hidden state to detach."""


class ExpertDistillation(Distillation):
    """rsl-rl's Distillation whose teacher is the environment's task expert (agent.teacher is not read).

    expert_mixing: DAgger's mixture policy (Ross et al. 2011, beta_i): at update i each environment
    step executes the expert's action instead of the student's with probability
    initial x max(0, 1 - i / iterations), so early rollouts stay near the expert's path, where the
    labels say how to finish rather than only which way to turn back; the student is trained on
    every step either way. {"initial": 0} turns it off (rsl-rl's Distillation).
    """

    teacher_loaded = True  # a scripted expert has no weights to load

    def __init__(self, *args, expert_mixing: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mixing = {"initial": 0.0, "iterations": 1, **(expert_mixing or {})}
        self.mixing_initial, self.mixing_iterations = float(mixing["initial"]), int(mixing["iterations"])

    @property
    def expert_share(self) -> float:
        """The probability that a step of this rollout executes the expert's action (beta_i)."""
        return self.mixing_initial * max(0.0, 1.0 - self.num_updates / self.mixing_iterations)

    def act(self, obs: TensorDict) -> torch.Tensor:
        """The student's sampled actions, each replaced by the expert's with probability `expert_share`;
        the stored labels are the expert's in every case."""
        actions = super().act(obs)
        share = self.expert_share
        if share > 0.0:
            take = torch.rand(actions.shape[0], 1, device=actions.device) < share
            actions = torch.where(take, self.transition.privileged_actions, actions)
            self.transition.actions = actions
        return actions

    def save(self) -> dict:
        """rsl-rl's models and optimiser, and the number of updates so far (the mixing schedule's clock)."""
        return {**super().save(), "num_updates": self.num_updates}

    @staticmethod
    def construct_algorithm(obs: TensorDict, env: VecEnv, cfg: dict, device: str) -> ExpertDistillation:
        """rsl-rl's construction (student model from cfg["student"], storage, optimiser) with the
        task's expert for env (an `RslRlVecEnv` over a sonolab `BatchedEnv`) as the teacher."""
        batched = env.env
        expert = registry.spec(batched.cfg.name).expert(batched)
        # rsl-rl builds the teacher as class_name(obs, obs_groups, "teacher", num_actions) from a deep
        # copy of its config: a function is copied by reference, so the expert (which may hold the env) is not
        teacher = {"class_name": lambda *_: ExpertTeacher(expert)}
        return Distillation.construct_algorithm(obs, env, {**cfg, "teacher": teacher}, device)

    def load(self, loaded_dict: dict, load_cfg: dict | None, strict: bool) -> bool:
        """The student and its optimiser from a checkpoint of this algorithm (the teacher has no
        weights); True: the checkpoint's iteration counts (a resume)."""
        self._raw_student.load_state_dict(loaded_dict["student_state_dict"], strict=strict)
        if (load_cfg or {}).get("optimizer", True):
            self.optimizer.load_state_dict(loaded_dict["optimizer_state_dict"])
            self.num_updates = int(loaded_dict["num_updates"])
        return True
