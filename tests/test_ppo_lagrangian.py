"""learner=ppo_lag: the PID multiplier, the cost critic's returns, and a constraint that binds.

The toy problem is an rsl-rl VecEnv where the reward is the action a in [-1, 1] and each step costs
(a + 1) / 2: unconstrained, a goes to 1 and an episode of 10 steps costs 10; under a limit of 3 per
episode the best policy spends exactly the limit (a = -0.4).
"""

from __future__ import annotations

import pytest
import torch
from rsl_rl.env import VecEnv
from rsl_rl.runners import OnPolicyRunner
from tensordict import TensorDict

from policies import checkpoints, learners
from policies.evaluation import constraint_metrics
from policies.learners.lagrange import CostWindow, PidLagrangian
from policies.learners.ppo_lag import ALGORITHM
from policies.runner import Runner
from policies.workflow import build_env, compose_config, train_config
from sim.errors import InputError
from tests.tasks_helpers import SMALL_RUN

EPISODE = 10


class SpendEnv(VecEnv):
    """Reward a, cost "spend" = (a + 1) / 2 per step, episodes of EPISODE steps (time-outs)."""

    cost_units = {"spend": "1"}

    def __init__(self, num_envs: int = 64) -> None:
        self.num_envs, self.num_actions, self.max_episode_length = num_envs, 1, EPISODE
        self.device, self.cfg = "cpu", {}
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long)
        self.sums = torch.zeros(num_envs)

    def get_observations(self) -> TensorDict:
        time = self.episode_length_buf.float()[:, None] / EPISODE
        return TensorDict({"policy": torch.ones(self.num_envs, 1), "critic": time}, batch_size=[self.num_envs])

    def step(self, actions: torch.Tensor):
        a = actions[:, 0].clamp(-1.0, 1.0)
        cost = (a + 1.0) / 2.0
        self.sums += cost
        self.episode_length_buf += 1
        done = self.episode_length_buf >= EPISODE
        extras = {"time_outs": done.clone(), "costs": {"spend": cost}, "log": {}}
        if bool(done.any()):
            extras["log"] = {"Cost/spend": self.sums[done].clone()}
            self.sums[done] = 0.0
            self.episode_length_buf[done] = 0
        return self.get_observations(), a, done.long(), extras


def toy_cfg(algorithm: str = ALGORITHM, limit: float = 3.0, **gains: float) -> dict:
    ppo = {
        "class_name": algorithm,
        "learning_rate": 3e-3,
        "num_learning_epochs": 5,
        "num_mini_batches": 2,
        "entropy_coef": 0.0,
        "gamma": 0.9,
        "lam": 0.95,
        "schedule": "fixed",
    }
    if algorithm == ALGORITHM:
        ppo.update(cost_limits={"spend": limit}, lagrangian=gains, cost_window=64)
    return {
        "num_steps_per_env": EPISODE,
        "save_interval": 1000,
        "obs_groups": {"actor": ["policy"], "critic": ["critic"]},
        "actor": {
            "class_name": "MLPModel",
            "hidden_dims": [16],
            "activation": "elu",
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 0.5},
        },
        "critic": {"class_name": "MLPModel", "hidden_dims": [16], "activation": "elu"},
        "algorithm": ppo,
    }


def episode_cost(runner: OnPolicyRunner) -> float:
    return runner.alg.constraint_log()["Constraint/episode_cost/spend"]


def deterministic_cost(runner: OnPolicyRunner) -> float:
    """The episode cost of the runner's policy without exploration noise (its action mean)."""
    with torch.inference_mode():
        a = runner.get_inference_policy()(runner.env.get_observations()).clamp(-1.0, 1.0)
    runner.alg.train_mode()
    return float(EPISODE * ((a + 1.0) / 2.0).mean())


def multiplier(runner: OnPolicyRunner) -> float:
    return runner.alg.constraint_log()["Constraint/lambda/spend"]


def test_the_multiplier_rises_while_the_cost_exceeds_its_limit_binds_and_falls_back_when_slack():
    torch.manual_seed(0)
    unconstrained = OnPolicyRunner(SpendEnv(), toy_cfg("PPO"), None, "cpu")
    unconstrained.learn(60)
    assert deterministic_cost(unconstrained) > 8.0  # the reward's optimum spends nearly everything: cost ~10 > 3

    torch.manual_seed(0)
    runner = OnPolicyRunner(SpendEnv(), toy_cfg(kp=0.5, ki=0.05), None, "cpu")
    lambdas, costs = [], []
    for _ in range(120):
        runner.learn(1)
        lambdas.append(multiplier(runner))
        costs.append(episode_cost(runner))
    assert costs[0] > 3.0 and lambdas[0] > 0.0  # the random start violates: lambda rises at once
    assert max(lambdas[:20]) > 1.0
    final = sum(costs[-20:]) / 20
    assert 2.4 < final < 3.6, final  # the policy's cost ends at the limit, not at 0 or 10
    assert 2.0 < deterministic_cost(runner) < 4.0
    assert all(0.5 < lam < 6.0 for lam in lambdas[-20:])  # the constraint binds to the end

    runner.alg.lagrangian.limits.fill_(20.0)  # slack: the best policy now spends everything
    for _ in range(20):
        runner.learn(1)
    assert multiplier(runner) == 0.0
    assert episode_cost(runner) > 6.0


def test_with_the_multiplier_held_at_zero_the_update_is_ppos():
    torch.manual_seed(0)
    ppo = OnPolicyRunner(SpendEnv(), toy_cfg("PPO"), None, "cpu")
    lag = OnPolicyRunner(SpendEnv(), toy_cfg(kp=0.0, ki=0.0, kd=0.0, initial=0.0), None, "cpu")
    lag.alg.actor.load_state_dict(ppo.alg.actor.state_dict())
    lag.alg.critic.load_state_dict(ppo.alg.critic.state_dict())
    lag.alg.optimizer.load_state_dict(ppo.alg.optimizer.state_dict())
    for runner in (ppo, lag):
        torch.manual_seed(1)
        runner.learn(1)
    assert lag.alg.lagrangian.multiplier.item() == 0.0 and episode_cost(lag) > 3.0  # violated, yet held at 0
    for name, tensor in ppo.alg.actor.state_dict().items():
        assert torch.equal(tensor, lag.alg.actor.state_dict()[name]), name


def test_pid_gains_give_gradient_ascent_a_fixed_multiplier_and_a_rise_only_derivative():
    limits = torch.tensor([1.0])
    ascent = PidLagrangian(limits, kp=0.0, ki=0.5, kd=0.0)
    values = [ascent.update(torch.tensor([c])).item() for c in (3.0, 2.0, 0.0, 0.0, 0.0)]
    assert values == pytest.approx([1.0, 1.5, 1.0, 0.5, 0.0])  # max(0, lambda + ki (J - d))
    held = PidLagrangian(limits, kp=0.0, ki=0.0, kd=0.0, initial=0.7)
    assert [held.update(torch.tensor([c])).item() for c in (5.0, 0.0)] == pytest.approx([0.7, 0.7])
    pid = PidLagrangian(limits, kp=1.0, ki=0.0, kd=2.0)
    # P on the excess (J - d), D only on a rising cost.
    assert [pid.update(torch.tensor([c])).item() for c in (2.0, 3.0, 2.5)] == pytest.approx([1.0, 4.0, 1.5])


def test_the_cost_window_keeps_the_last_episodes():
    window = CostWindow(3, 2)
    assert window.mean().tolist() == [0.0, 0.0]
    window.add(torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    window.add(torch.tensor([[3.0, 1.0], [4.0, 0.0]]))
    assert sorted(window.held()[:, 0].tolist()) == [2.0, 3.0, 4.0]
    assert window.mean().tolist() == pytest.approx([3.0, 1 / 3])
    assert window.violation_fraction().tolist() == pytest.approx([1.0, 1 / 3])


def test_a_time_out_bootstraps_the_cost_with_the_cost_value():
    torch.manual_seed(0)
    runner = OnPolicyRunner(SpendEnv(num_envs=4), toy_cfg(), None, "cpu")
    alg = runner.alg
    last = alg.cost_critic.mlp[-1]
    with torch.no_grad():  # a cost critic that predicts 2.0 everywhere
        for p in alg.cost_critic.parameters():
            p.zero_()
        last.bias.fill_(2.0)
    obs = runner.env.get_observations()
    with torch.inference_mode():
        alg.act(obs)
        costs = torch.tensor([0.5, 0.5, 0.25, 0.0])
        time_outs = torch.tensor([True, False, True, False])
        extras = {"time_outs": time_outs, "costs": {"spend": costs}, "log": {}}
        alg.process_env_step(obs, torch.zeros(4), time_outs.long(), extras)
    expected = costs + alg.cost_gamma * 2.0 * time_outs.float()
    assert torch.allclose(alg.costs[0, :, 0], expected)
    assert torch.equal(alg.cost_values[0, :, 0], torch.full((4,), 2.0))


def nav_cfg():
    """us_nav_state under its contact-force limit, lowered to 3 N so the probe's usual 3-4 N costs."""
    return compose_config(
        [
            "task=us_nav_state",
            "learner=ppo_lag",
            "num_envs=16",
            "task.reward.max_force_n=3.0",
            "agent.num_steps_per_env=8",
            "agent.algorithm.cost_window=16",
            *SMALL_RUN,
        ]
    )


def test_a_resumed_run_continues_the_multipliers_and_cost_critic_exactly(tmp_path):
    cfg = nav_cfg()

    def runner(log_dir):
        torch.manual_seed(0)
        return Runner(build_env(cfg, "train"), train_config(cfg), str(log_dir), "cpu")

    straight = runner(tmp_path / "a")
    straight.learn(4, init_at_random_ep_len=True)  # episodes end within the run: the window fills
    first = runner(tmp_path / "b")
    first.learn(2, init_at_random_ep_len=True)  # saves model_1.pt, as a killed run leaves its last checkpoint
    resumed = runner(tmp_path / "c")
    assert resumed.resume(tmp_path / "b" / "model_1.pt") == 2
    resumed.learn(2)
    a, b = straight.alg.save(), resumed.alg.save()
    assert a["lagrangian_state_dict"]["multiplier.multiplier"].item() > 0.0  # the probe presses above 3 N: it binds
    for key in ("lagrangian_state_dict", "cost_critic_state_dict", "actor_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    saved = checkpoints.load_checkpoint(tmp_path / "a" / "model_3.pt")
    assert torch.equal(saved["lagrangian_state_dict"]["window.values"], a["lagrangian_state_dict"]["window.values"])


def test_evaluation_reports_how_a_constrained_policy_kept_its_limits():
    episodes = {"Cost/spend": torch.tensor([1.0, 3.0]), "Cost/heat": torch.tensor([0.0, 0.0])}
    lengths = torch.tensor([10, 30])
    one = constraint_metrics(episodes, lengths, {"spend": 2.5})
    assert one == {"ep_cost_mean": 2.0, "cost_rate": pytest.approx(0.1), "constraint_satisfied": True}
    both = constraint_metrics(episodes, lengths, {"spend": 1.0, "heat": 0.0})
    assert both["constraint_satisfied"] == {"spend": False, "heat": True}


def test_bad_constraint_settings_are_refused_by_name():
    learner = learners.get("ppo_lag")
    agent = dict(train_config(nav_cfg()))
    learner.check_agent(agent, 16)

    def refused(change: dict, match: str) -> None:
        bad = {**agent, "algorithm": {**agent["algorithm"], **change}}
        with pytest.raises(InputError, match=match):
            learner.check_agent(bad, 16)

    refused({"cost_limits": {}}, "agent.algorithm.cost_limits")
    refused({"cost_limits": {"contact_force": -1.0}}, "agent.algorithm.cost_limits.contact_force")
    refused({"lagrangian": {"ki": -0.1}}, "agent.algorithm.lagrangian.ki")
    refused({"lagrangian": {"smoothing": 1.0}}, "agent.algorithm.lagrangian.smoothing")
    refused({"lagrangian": {"gain": 1.0}}, "agent.algorithm.lagrangian")
    refused({"class_name": "PPO"}, "agent.algorithm.class_name")
    refused({"normalize_advantage_per_mini_batch": True}, "normalize_advantage_per_mini_batch")
    unknown = toy_cfg()
    unknown["algorithm"]["cost_limits"] = {"heat": 1.0}
    with pytest.raises(InputError, match=r"cost_limits: expected costs the environment reports \(\['spend'\]\)"):
        OnPolicyRunner(SpendEnv(), unknown, None, "cpu")
