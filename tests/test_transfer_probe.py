"""The supervised transfer probe (`sonolab-benchmark transfer`, policies/transfer_probe.py): R^2 is
right on known cases, the expert's steps come from the split asked for, and fitting the actor
network raises its R^2 on the steps it is fitted to."""

from __future__ import annotations

import pytest
import torch

from policies.cli.benchmark import main as benchmark
from policies.transfer_probe import expert_steps, network_settings, r2, transfer_probe
from policies.workflow import compose_config
from tests.tasks_helpers import SMALL_RUN

SMALL = [*SMALL_RUN, "task=us_nav", "num_envs=4", "task.renderer.compile=false", "task.observation.image_size=32"]


def test_r2_is_one_for_exact_predictions_and_zero_for_the_mean():
    target = torch.tensor([[0.0, 1.0], [2.0, -1.0], [4.0, 3.0]])
    assert torch.allclose(r2(target, target), torch.ones(2))
    assert torch.allclose(r2(target.mean(0).expand_as(target), target), torch.zeros(2), atol=1e-6)
    # MSE 1 against variances 8/3 and 8/3: 1 - 3/8
    assert torch.allclose(r2(target + 1.0, target), torch.full((2,), 1 - 3 / 8))


def test_the_network_is_the_learners_policy_network():
    ppo = compose_config(["task=us_nav"])
    distill = compose_config(["task=us_nav", "learner=distill"])
    assert network_settings(ppo.agent)[1] == network_settings(distill.agent)[1] == ["policy", "image"]
    assert network_settings(ppo.agent)[0]["class_name"] == "policies.models.correlation:CorrelationModel"
    assert network_settings(distill.agent)[0]["distribution_cfg"]["init_std"] == 0.2


def test_expert_steps_record_the_actor_inputs_and_the_experts_actions():
    cfg = compose_config(SMALL)
    obs, actions = expert_steps(cfg, "test", 3, 0.3, ["policy", "image"])
    assert set(obs.keys()) == {"policy", "image"} and obs.batch_size[0] == actions.shape[0] == 12
    assert actions.shape[1] == 5 and actions.abs().max() <= 1.0 and actions.std(0).min() > 0
    noiseless = expert_steps(cfg, "test", 3, 0.0, ["policy", "image"])[1]
    assert torch.equal(actions[:4], noiseless[:4])  # the first step: before any noise moved the probe
    assert not torch.equal(actions, noiseless)


def test_fitting_raises_the_r2_on_the_fitted_steps():
    result = transfer_probe(compose_config(SMALL), steps=6, updates=60, batch=24, lr=3e-3, noise=0.3, every=20)
    assert result["samples"] == {"train": 24, "test": 24} and [p["update"] for p in result["curve"]] == [20, 40, 60]
    first, last = result["curve"][0]["r2_train"], result["r2_train"]
    assert sum(last) / 5 > max(sum(first) / 5, 0.9)  # 24 samples: the network memorises them
    assert all(best >= test for best, test in zip(result["r2_test_best"], result["r2_test"]))


def test_bad_benchmark_options_are_named(capsys):
    for option, value in (("--updates", "0"), ("--lr", "0"), ("--noise", "-1")):
        with pytest.raises(SystemExit) as stop:
            benchmark(["transfer", "--task", "us_nav", option, value, "--json"])
        assert stop.value.code == 2 and option in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark(["transfer", "--task", "nope"])
