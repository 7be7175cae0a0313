"""Batched damped-least-squares inverse kinematics for `Arm` tool poses.

Each step solves dq = J^T (J J^T + lambda^2 I)^-1 e for the 6-D pose error e = (target position -
position, axis-angle of R_target R^T) in the robot base frame, then limits and clamps q.

`check=False` (an environment's own, valid-by-construction inputs) skips every test that reads
tensor values back to the host, and `solve_ik`'s early exit, so the call never synchronises
with a GPU; shapes, devices and Python numbers are still checked.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from sim.errors import InputError
from sim.robot.arm import Arm
from sim.transforms import check_poses, quat_to_matrix, rotation_log


class IKResult(NamedTuple):
    """Outcome of `solve_ik` for N targets.

    q: (N, dof) joint angles in radians, within the joint limits.
    position_error_m: (N,) distance from tool to target position in metres.
    angle_error_rad: (N,) rotation angle between tool and target orientation in radians.
    reachable: (N,) bool, both errors within the solver's tolerances.
    iterations: DLS steps taken (the solver stops early once every target is reached).
    """

    q: torch.Tensor
    position_error_m: torch.Tensor
    angle_error_rad: torch.Tensor
    reachable: torch.Tensor
    iterations: int


def pose_error(tool: torch.Tensor, target_rot: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """6-D errors (N, 6): target_pos - tool position (m), then axis-angle of R_target R_tool^T (rad).

    tool (N, 4, 4) transforms; target_rot (N, 3, 3) and target_pos (N, 3), all in one frame.
    """
    rot_err = target_rot @ tool[:, :3, :3].transpose(-1, -2)
    return torch.cat([target_pos - tool[:, :3, 3], rotation_log(rot_err)], -1)


def dls_delta(jac: torch.Tensor, err: torch.Tensor, damping: float) -> torch.Tensor:
    """Joint steps (N, dof) = J^T (J J^T + damping^2 I)^-1 err for jac (N, 6, dof), err (N, 6)."""
    eye = torch.eye(jac.shape[1], dtype=jac.dtype, device=jac.device)
    jjt = jac @ jac.transpose(-1, -2) + damping**2 * eye
    return (jac.transpose(-1, -2) @ torch.linalg.solve(jjt, err[..., None]))[..., 0]


def limit_delta(dq: torch.Tensor, max_joint_delta: float | torch.Tensor | None, check: bool = True) -> torch.Tensor:
    """dq (N, dof) scaled down uniformly so no joint moves more than max_joint_delta (rad).

    max_joint_delta: a scalar, or a tensor broadcastable to (N, dof) (e.g. velocity limit * dt);
    None leaves dq unchanged. Uniform scaling keeps the direction of the DLS step. check=False
    skips the test that the limits are positive.
    """
    if max_joint_delta is None:
        return dq
    # A number is filled in on the device: torch.as_tensor of it would be a host-to-device copy (a sync).
    if isinstance(max_joint_delta, torch.Tensor):
        limit = max_joint_delta.to(dq.device, dq.dtype)
    else:
        limit = torch.full((), max_joint_delta, dtype=dq.dtype, device=dq.device)
    if check and not (limit > 0).all():
        raise InputError(f"max_joint_delta: expected positive joint steps in radians (or None), got {max_joint_delta}")
    ratio = (dq.abs() / limit).amax(-1, keepdim=True)
    return dq / ratio.clamp_min(1.0)


def _targets_in_base(
    arm: Arm, q: torch.Tensor, q_name: str, targets: torch.Tensor, what: str, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated world-frame targets (N, 7) as base-frame rotations (N, 3, 3) and positions (N, 3);
    check=False skips the value checks (finite q and poses, non-zero quaternions)."""
    arm.check_q(q, q_name, finite=check)
    if not isinstance(targets, torch.Tensor):
        raise InputError(f"{what}: expected a torch tensor of poses (N, 7), got {type(targets).__name__}")
    if targets.ndim != 2 or targets.shape[1] != 7:
        raise InputError(f"{what}: expected shape (N, 7) (position xyz, quaternion wxyz), got {tuple(targets.shape)}")
    if check:
        try:
            check_poses(targets)
        except InputError as err:
            raise InputError(f"{what}{str(err).removeprefix('poses')}") from err
    if targets.shape[0] != q.shape[0] or targets.device != q.device:
        raise InputError(
            f"{what}: expected {q.shape[0]} poses on {q.device} (one per row of q), "
            f"got {targets.shape[0]} on {targets.device}"
        )
    base = arm.world_to_base(targets.to(q.dtype))
    return quat_to_matrix(base[:, 3:]), base[:, :3]


def _check_positive(value: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"{what}: expected a positive finite number, got {value!r}")


def joint_step(
    arm: Arm,
    q: torch.Tensor,
    target: torch.Tensor,
    max_joint_delta: float | torch.Tensor | None,
    damping: float = 0.05,
    check: bool = True,
) -> torch.Tensor:
    """One damped-least-squares step of q (N, dof) towards world-frame tool poses target (N, 7).

    For a control loop: call once per env step with max_joint_delta = arm.velocity * dt to respect
    the joint velocity limits. Returns the new joint angles (N, dof), clamped to the joint limits.
    check=False: no host synchronisation (see the module docstring).
    """
    _check_positive(damping, "damping")
    target_rot, target_pos = _targets_in_base(arm, q, "q", target, "target", check)
    tool, jac = arm.kinematics(q, check)
    dq = limit_delta(dls_delta(jac, pose_error(tool, target_rot, target_pos), damping), max_joint_delta, check)
    return arm.clamp(q + dq)


def solve_ik(
    arm: Arm,
    target_poses: torch.Tensor,
    q0: torch.Tensor,
    iterations: int = 100,
    damping: float = 0.05,
    max_joint_delta: float | torch.Tensor | None = 0.3,
    position_tol_m: float = 1e-3,
    angle_tol_rad: float = math.radians(1.0),
    check: bool = True,
) -> IKResult:
    """Joint angles reaching world-frame tool poses target_poses (N, 7), starting from q0 (N, dof).

    Iterates clamped DLS steps (see `joint_step`) at most `iterations` times; targets already within
    tolerance stop moving and the loop ends when all are. damping (lambda) trades accuracy near
    singularities for stability; max_joint_delta (rad per step) keeps steps in the region where the
    linearisation holds. Unreachable targets end at the closest pose found, with reachable False.
    check=False: no host synchronisation (see the module docstring): always `iterations` steps,
    with the same result, since reached targets stop moving.
    """
    _check_positive(damping, "damping")
    _check_positive(position_tol_m, "position_tol_m")
    _check_positive(angle_tol_rad, "angle_tol_rad")
    if not isinstance(iterations, int) or iterations < 0:
        raise InputError(f"iterations: expected a non-negative int, got {iterations!r}")
    target_rot, target_pos = _targets_in_base(arm, q0, "q0", target_poses, "target_poses", check)
    q = arm.clamp(q0)
    for step in range(iterations + 1):
        tool, jac = arm.kinematics(q, check)
        err = pose_error(tool, target_rot, target_pos)
        pos_err, ang_err = err[:, :3].norm(dim=-1), err[:, 3:].norm(dim=-1)
        reachable = (pos_err <= position_tol_m) & (ang_err <= angle_tol_rad)
        if step == iterations or (check and bool(reachable.all())):
            break
        q_next = arm.clamp(q + limit_delta(dls_delta(jac, err, damping), max_joint_delta, check))
        q = torch.where(reachable[:, None], q, q_next)
    return IKResult(q, pos_err, ang_err, reachable, step)
