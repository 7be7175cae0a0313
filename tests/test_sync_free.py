"""Habits: importing the packages changes nothing process-wide, and env.step never waits on the device.

`tests.host_sync.HostSyncGuard` makes every operation that reads tensor data back to the host
raise; on CPU these are the very calls that synchronise with a GPU, so stepping a CPU environment
under the guard proves the CUDA step path is sync-free.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from sim.anatomy.patient_set import load_patients
from tasks import make_env, registry
from tests.host_sync import HostSync, HostSyncGuard
from tests.tasks_helpers import ROOT, small_patient_set

# The one read env.step makes by design, in its own body: which environments ended, to reset them
# (Isaac Lab does the same). Everything it calls, the resets included, stays on the device.
RESET_DECISION = ("sim/envs/base.py", "step")


# -- the guard catches what it claims to


ONE, REPEATS = torch.tensor(1.0), torch.tensor([1, 2, 1])  # made outside the guard


@pytest.mark.parametrize(
    "op, what",
    [
        (lambda x: x.sum().item(), "Tensor.item"),
        (lambda x: x.tolist(), "Tensor.tolist"),
        (lambda x: x.numpy(), "Tensor.numpy"),
        (lambda x: x.cpu(), "Tensor.cpu"),
        (lambda x: bool(x.any()), "bool"),
        (lambda x: (x > 0.5).all() or None, "bool"),
        (lambda x: int(x[0]), "int"),
        (lambda x: float(x.max()), "float"),
        (lambda x: [0, 1, 2][x[0].long()], "Python index"),
        (lambda x: x[x > 0.5], "boolean-mask"),
        (lambda x: x.index_put_((x > 0.5,), ONE), "boolean-mask"),
        (lambda x: x.nonzero(), "nonzero"),
        (lambda x: torch.where(x > 0.5), "nonzero"),
        (lambda x: x.unique(), "unique"),
        (lambda x: torch.masked_select(x, x > 0.5), "masked_select"),
        (lambda x: torch.equal(x, x), "equal"),
        (lambda x: torch.allclose(x, x), "allclose|_local_scalar_dense"),
        (lambda x: x.repeat_interleave(REPEATS), "repeat_interleave"),
        (lambda x: x + torch.tensor([0.1, 0.2, 0.3]), "tensor of host data"),
        (lambda x: x * torch.as_tensor(2.0), "as_tensor of host data"),
    ],
)
def test_guard_catches_every_kind_of_host_read(op, what):
    x = torch.tensor([0.2, 0.7, 0.9])
    with pytest.raises(HostSync, match=what):
        with HostSyncGuard():
            op(x)


def test_guard_lets_device_side_work_through():
    x, index = torch.tensor([0.2, 0.7, 0.9]), torch.tensor([2, 0])
    with HostSyncGuard():
        y = torch.where(x > 0.5, x, 0.0).cumsum(0)[index] + x.shape[0] + len(x) + torch.eye(3)[1].sum()
    assert y.tolist() == pytest.approx([8.6, 7.0])


# -- the step path of every registered task


@pytest.fixture(scope="module")
def patients():
    return load_patients(small_patient_set(), "train", progress=False)


# Every registered task and variant as registered, plus us_nav's per-episode imaging randomisation.
VARIANTS = {name: {"name": name} for name in registry.names()}
VARIANTS["us_nav_randomized"] = {"name": "us_nav", "observation": {"image_size": 16, "randomize_imaging": True}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_step_and_resets_are_sync_free(patients, variant):
    """Steps with zero, NaN, huge and random actions; the first step ends half the episodes and
    the last ends all of them, so partial and full resets run under the guard too."""
    env = make_env(VARIANTS[variant], patients, 4, seed=0)
    n, a = env.num_envs, env.num_actions
    env.max_episode_length = 3
    env.keep_final_obs = True
    g = torch.Generator().manual_seed(0)
    actions = [torch.zeros(n, a), torch.full((n, a), torch.nan), torch.full((n, a), 1e9)]
    actions += [2 * torch.rand(n, a, generator=g) - 1 for _ in range(4)]
    env.episode_length_buf[: n // 2] = env.max_episode_length - 1
    dones = []
    with HostSyncGuard(allowed={RESET_DECISION}):
        for i, action in enumerate(actions):
            if i == len(actions) - 1:
                env.episode_length_buf.fill_(env.max_episode_length - 1)
            obs, reward, terminated, truncated, _ = env.step(action)
            dones.append(terminated | truncated)
    ends = torch.stack(dones).sum(1)
    assert ends[0] == n // 2 and ends[-1] == n
    assert all(torch.isfinite(v).all() for v in obs.values()) and torch.isfinite(reward).all()


def test_reset_decision_is_the_only_read(patients):
    """Without the allowance, the one read the guard stops is BatchedEnv.step's reset decision."""
    env = make_env(VARIANTS["us_nav_state"], patients, 2, seed=0)
    site = r"aten.nonzero.default in sim/envs/base.py:step \(from sim/envs/base.py:\d+ step\)"
    with pytest.raises(HostSync, match=site):
        with HostSyncGuard():
            env.step(torch.zeros(2, 5))


# -- imports have no process-wide side effects

IMPORT_PROBE = """
import json
import torch
import torch._inductor.config as inductor


def settings():
    return {
        "inductor.assert_indirect_indexing": inductor.assert_indirect_indexing,
        "threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "grad": torch.is_grad_enabled(),
    }


report = {"default": settings()}
import sim, tasks, policies, sim.memory
from sim.anatomy.bank import PatientBank
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer, RendererConfig
from tests.slabs import slab_patient
report.update(imported=settings(), kept_on_import=sim.memory.freed_memory_kept())
bank = PatientBank([slab_patient([("skin", 2), ("fat", 10), ("muscle", 20)], 20, 0.002)])
Renderer(bank, ProbeSpec.preset("linear"), config=RendererConfig(compile=True))
report.update(built=settings(), kept_by_renderer=sim.memory.freed_memory_kept())
print(json.dumps(report))
"""


def test_importing_the_packages_changes_nothing_process_wide():
    """Imports leave torch's settings (inductor's config included) and glibc's allocator alone;
    building a compiled renderer tunes the allocator (documented, sim.memory), nothing else."""
    probe = [sys.executable, "-c", IMPORT_PROBE]
    out = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["default"]["inductor.assert_indirect_indexing"] is True
    assert report["imported"] == report["default"] and report["built"] == report["default"]
    assert report["kept_on_import"] is False
    assert report["kept_by_renderer"] is (platform.libc_ver()[0] == "glibc")  # a no-op elsewhere
