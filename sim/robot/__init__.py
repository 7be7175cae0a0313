"""Robot arms: URDF kinematics (forward, Jacobian, limits, base placement), batched IK, and the
probe-on-skin contact model."""

from sim.robot.arm import Arm, compose_poses, invert_poses
from sim.robot.contact import Contact, SkinBank, probe_contact
from sim.robot.ik import IKResult, joint_step, solve_ik

__all__ = [
    "Arm",
    "Contact",
    "IKResult",
    "SkinBank",
    "compose_poses",
    "invert_poses",
    "joint_step",
    "probe_contact",
    "solve_ik",
]
