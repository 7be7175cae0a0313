"""us_surgery on the Isaac Lab backend, kit-less on the CPU (Newton physics): the task builds its
two-arm scene there and steps it; the physics arms follow the task's probe hold and drill commands,
the probe's contact sensor feels the skin, and the scripted expert gets its drill into bone. The
same task on the torch backend: tests/test_us_surgery.py. Runs where Isaac Lab is installed (CI
stage .ci/isaac)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("isaaclab", reason="Isaac Lab is not installed (Python 3.12: pip install -e '.[isaac]')")

from sim.anatomy import prepare_patient  # noqa: E402
from tasks import make_env, registry  # noqa: E402

N = 2


def test_us_surgery_steps_on_isaac_lab():
    patient = prepare_patient({"source": "phantom", "seed": 0, "spacing_mm": 2.0}, progress=False)
    # The probe held 8 cm from the drill's way in: at the task's default in-plane hold (the probe's
    # face 4-8 mm from it) the two arms' collision cylinders (authored from kinematic parameters,
    # bulkier than the real links) touch above the patient and hold the physics drill 3 cm off.
    apart = {"name": "us_surgery_state", "probe_hold": {"clearance_m": 0.08}}
    env = make_env(apart, [patient], N, backend={"name": "isaaclab"})
    try:
        expert = registry.spec("us_surgery_state").expert(env)
        obs = env.reset()
        drill_err, probe_err, forces = [], [], []
        for _ in range(40):
            obs, reward, terminated, truncated, _ = env.step(expert(obs))
            assert torch.isfinite(reward).all() and all(torch.isfinite(v).all() for v in obs.values())
            drill_err.append((env.drill_pose[:, :3] - env.tip).norm(dim=-1))
            probe_err.append((env.probe_pose[:, :3] - env.probe_target[:, :3]).norm(dim=-1))
            forces.append(env.force)
        drill_err, probe_err, forces = torch.stack(drill_err), torch.stack(probe_err), torch.stack(forces)
        # The drill commands move at most 2 mm per step; the physics arms follow within a few mm (the
        # probe's face is pressed 3 mm into the rigid body collider, which holds it back).
        assert float(drill_err[5:].max()) < 0.003, drill_err.max()
        assert float(probe_err[5:].max()) < 0.007, probe_err.max()
        assert float(forces[5:].min()) > 0.0, "the probe's sensor feels the skin"
        assert env.entered.all(), "the expert's drill is in bone"
    finally:
        env.scene.close()
