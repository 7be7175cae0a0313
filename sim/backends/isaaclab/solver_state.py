"""The physics solver's own state that later steps depend on, beyond the joint state.

Newton's MuJoCo-Warp solver warm-starts each step's constraint solve from the previous step's
accelerations (`qacc_warmstart`, one row per environment). Writing joint states (a resume) marks
those environments for a solver reset that zeroes their warm start, so a resumed run would
solve its first contacts from zero and drift from the original by ~1e-4 of the contact force.
Saving and restoring the warm start makes the resume exact. PhysX keeps its solver state
internal: nothing to save there (resume then repeats the joint state only).
"""

from __future__ import annotations

from typing import Mapping

import torch

WARMSTART = "solver/qacc_warmstart"


def _mujoco_data():
    from isaaclab_newton.physics import NewtonManager

    solver = NewtonManager._solver  # the active solver: Isaac Lab has no public accessor for it
    return getattr(solver, "mjw_data", None)


def solver_state(physics: str) -> dict[str, torch.Tensor]:
    """{WARMSTART: (num_envs, nv)} for Newton with MuJoCo-Warp, {} otherwise."""
    data = _mujoco_data() if physics == "newton" else None
    if data is None:
        return {}
    import warp as wp

    return {WARMSTART: wp.to_torch(data.qacc_warmstart).clone()}


def load_solver_state(physics: str, state: Mapping[str, torch.Tensor]) -> None:
    """Restore `solver_state` after joint states were written: the pending writes (and the solver
    reset they trigger) are applied first, then the warm start is put back."""
    if WARMSTART not in state:
        return
    import warp as wp
    from isaaclab_newton.physics import NewtonManager

    NewtonManager.forward()
    target = wp.to_torch(_mujoco_data().qacc_warmstart)
    target.copy_(state[WARMSTART].to(target.device, target.dtype))
