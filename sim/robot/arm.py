"""Batched arm kinematics on pytorch-kinematics: tool poses, Jacobians, joint limits, base placement.

Poses are (x, y, z, qw, qx, qy, qz) in metres; joint angles in radians. The robot base frame is
the URDF root link; `Arm.base_pose` places it in the world (= patient) frame. Kinematics never
read tensor data back to the host except the finiteness check of q, which `check=False` skips
for callers whose q is valid by construction (an environment's own state: sync-free on GPUs).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_kinematics as pk
import torch

from sim.errors import InputError
from sim.resources import assets_dir
from sim.transforms import matrix_to_quat, quat_to_matrix

ROBOTS_DIR = assets_dir() / "robots"
ROBOT_NAMES = ("iiwa14", "panda")

# Joint configurations (rad) with the tool pointing straight down (base -z), elbow up; a natural
# IK start. The Panda's is Franka's documented "ready" pose.
HOME = {
    "iiwa14": (0.0, torch.pi / 4, 0.0, -torch.pi / 2, 0.0, torch.pi / 4, 0.0),
    "panda": (0.0, -torch.pi / 4, 0.0, -3 * torch.pi / 4, 0.0, torch.pi / 2, torch.pi / 4),
}


def compose_poses(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Poses (..., 7) of frame b given relative to frame a, expressed in a's parent: a * b."""
    ra = quat_to_matrix(a[..., 3:])
    pos = a[..., :3] + (ra @ b[..., :3, None])[..., 0]
    return torch.cat([pos, matrix_to_quat(ra @ quat_to_matrix(b[..., 3:]))], -1)


def invert_poses(a: torch.Tensor) -> torch.Tensor:
    """Inverse rigid transforms of poses (..., 7)."""
    rt = quat_to_matrix(a[..., 3:]).transpose(-1, -2)
    return torch.cat([-(rt @ a[..., :3, None])[..., 0], matrix_to_quat(rt)], -1)


def _resolve_urdf(robot: str | Path) -> tuple[str, Path]:
    """(name, path) for a robot name in assets/robots or a path to a .urdf file."""
    if str(robot) in ROBOT_NAMES:
        return str(robot), ROBOTS_DIR / f"{robot}.urdf"
    path = Path(robot)
    if path.suffix != ".urdf" or not path.is_file():
        raise InputError(
            f"robot: expected one of {list(ROBOT_NAMES)} or the path of an existing .urdf file, got {str(robot)!r}"
        )
    return path.stem, path


def unit_joints(q: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Joint angles q (N, dof) mapped to [-1, 1] by their limits lower, upper (dof,): the
    proprioception the tasks' policies see."""
    return 2 * (q - lower) / (upper - lower) - 1


class Arm:
    """A serial arm from a URDF with a tool frame, placed in the world by a base pose.

    Args:
        robot: "iiwa14", "panda" (assets/robots) or a path to a .urdf file.
        tool_frame: URDF link used as the tool (end effector); the probe face centre by default.
        base_pose: (7,) pose of the robot base in the world frame; identity if None.
        device: where the kinematic tree and limit tensors live.
    """

    def __init__(
        self,
        robot: str | Path = "iiwa14",
        tool_frame: str = "probe_tip",
        base_pose: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.name, self.urdf_path = _resolve_urdf(robot)
        self._urdf = self.urdf_path.read_text()
        try:
            chain = pk.build_serial_chain_from_urdf(self._urdf, tool_frame)
        except (ValueError, KeyError, AttributeError) as err:
            raise InputError(
                f"robot {self.name} ({self.urdf_path}): "
                f"expected a URDF with a serial chain to link {tool_frame!r}: {err}"
            ) from err
        self.tool_frame = tool_frame
        self.joint_names: list[str] = chain.get_joint_parameter_names()
        lower, upper = chain.get_joint_limits()
        _, velocity = chain.get_joint_velocity_limits()
        # Limits are kept in float64 and cast to the dtype of q where used.
        self.lower = torch.tensor(lower, dtype=torch.float64, device=device)
        self.device = self.lower.device  # resolved, e.g. "cuda" -> "cuda:0", to compare with q.device
        self.upper = torch.tensor(upper, dtype=torch.float64, device=self.device)
        self.velocity = torch.tensor(velocity, dtype=torch.float64, device=self.device)
        home = HOME.get(self.name, [0.0] * self.dof)
        self.home = torch.tensor(home, dtype=torch.float64, device=self.device).clamp(self.lower, self.upper)
        # Per-dtype chains on self.device; pytorch-kinematics needs q in the chain's dtype.
        self._chains: dict[torch.dtype, pk.SerialChain] = {torch.float32: chain.to(device=self.device)}
        self._tool_index = chain.frame_to_idx[tool_frame]  # the tool's row in the chain's (frames, N, 4, 4) transforms
        self.base_pose = base_pose

    @property
    def reach_m(self) -> float:
        """The farthest the tool frame can be from the base origin (m): the sum of the fixed distances
        between consecutive frames of the chain (a joint only turns what follows it), an upper bound."""
        frames = self._chain_for(torch.float32).forward_kinematics_tensor(self.home.float()[None])[:, 0, :3, 3]
        origins = torch.cat([torch.zeros_like(frames[:1]), frames])
        return float((origins[1:] - origins[:-1]).norm(dim=-1).sum())

    @property
    def dof(self) -> int:
        """Number of actuated joints."""
        return len(self.joint_names)

    def to(self, device: torch.device | str) -> Arm:
        """Move the kinematic tree, limits and base pose to `device` (in place); returns self."""
        for name in ("lower", "upper", "velocity", "home", "_base_pose"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = self.lower.device
        self._chains.clear()
        return self

    def check_q(self, q: torch.Tensor, what: str = "q", finite: bool = True) -> None:
        """Raise `InputError` unless q is a floating (N, dof) tensor on the arm's device, with
        finite values when `finite` (that test reads q back to the host: a sync on CUDA)."""
        if not isinstance(q, torch.Tensor) or not q.is_floating_point():
            raise InputError(
                f"{what}: expected a floating-point torch tensor of joint angles, "
                f"got {type(q).__name__} {getattr(q, 'dtype', '')}"
            )
        if q.ndim != 2 or q.shape[1] != self.dof:
            raise InputError(
                f"{what}: expected shape (N, {self.dof}) joint angles in radians for {self.name}, got {tuple(q.shape)}"
            )
        if q.device != self.device:
            raise InputError(
                f"{what}: expected a tensor on the arm's device {self.device} (see Arm.to), got {q.device}"
            )
        if finite and not torch.isfinite(q).all():
            raise InputError(f"{what}: expected finite joint angles, got NaN or infinity")

    def limits(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint (lower, upper) limits (dof,) in radians, in the dtype of `like`."""
        return self.lower.to(like.dtype), self.upper.to(like.dtype)

    def clamp(self, q: torch.Tensor) -> torch.Tensor:
        """q (N, dof) clamped to the joint limits."""
        lower, upper = self.limits(q)
        return q.clamp(lower, upper)

    def within_limits(self, q: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """(N,) bool: every joint of q (N, dof) lies within its limits (+- tol rad)."""
        lower, upper = self.limits(q)
        return ((q >= lower - tol) & (q <= upper + tol)).all(-1)

    def kinematics(self, q: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Tool transforms (N, 4, 4) and geometric Jacobians (N, 6, dof), both in the base frame.

        Jacobian rows are (linear velocity of the tool point, angular velocity). check=False skips
        the finiteness check of q (see `check_q`).
        """
        self.check_q(q, finite=check)
        jac, tool = self._chain_for(q.dtype).jacobian_tensor(q, ret_eef_pose=True)
        return tool, jac

    def forward(self, q: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Tool poses (N, 7) in the base frame for joint angles q (N, dof) in radians (check: see `kinematics`)."""
        self.check_q(q, finite=check)
        # The transforms of every frame, indexed here: pytorch-kinematics' forward_kinematics
        # looks frames up with a .item() per call.
        tool = self._chain_for(q.dtype).forward_kinematics_tensor(q)[self._tool_index]
        return torch.cat([tool[:, :3, 3], matrix_to_quat(tool[:, :3, :3])], -1)

    def forward_world(self, q: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Tool poses (N, 7) in the world frame for joint angles q (N, dof) (check: see `kinematics`)."""
        return self.base_to_world(self.forward(q, check))

    def jacobian(self, q: torch.Tensor) -> torch.Tensor:
        """Geometric Jacobians (N, 6, dof) of the tool in the base frame (linear rows, then angular)."""
        return self.kinematics(q)[1]

    def base_to_world(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses (N, 7) given in the robot base frame, expressed in the world frame."""
        return compose_poses(self.base_pose.to(poses.dtype).expand_as(poses), poses)

    def world_to_base(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses (N, 7) given in the world frame, expressed in the robot base frame."""
        inv = invert_poses(self.base_pose.to(poses.dtype))
        return compose_poses(inv.expand_as(poses), poses)

    def _chain_for(self, dtype: torch.dtype) -> pk.SerialChain:
        """The kinematic chain in `dtype` on the arm's device (built once per dtype)."""
        if dtype not in self._chains:
            chain = pk.build_serial_chain_from_urdf(self._urdf, self.tool_frame)
            self._chains[dtype] = chain.to(dtype=dtype, device=self.device)
        return self._chains[dtype]

    @property
    def base_pose(self) -> torch.Tensor:
        """(7,) float64 pose of the robot base in the world frame, unit quaternion."""
        return self._base_pose

    @base_pose.setter
    def base_pose(self, pose: torch.Tensor | None) -> None:
        """Place the base; None means the identity (base frame = world frame)."""
        if pose is None:
            pose = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
        value = torch.as_tensor(pose, dtype=torch.float64, device=self.device)
        if value.shape != (7,) or not torch.isfinite(value).all() or float(value[3:].norm()) < 1e-6:
            raise InputError(
                "base_pose: expected a finite (7,) pose (x, y, z, qw, "
                f"qx, qy, qz) with a non-zero quaternion, got {pose}"
            )
        self._base_pose = torch.cat([value[:3], value[3:] / value[3:].norm()])
