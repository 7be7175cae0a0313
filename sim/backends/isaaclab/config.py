"""`IsaacLabCfg`: the Isaac Lab backend's settings (Hydra: `backend.*`, conf/backend/isaaclab.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IsaacLabCfg:
    """physics: "newton" (kit-less Newton with MuJoCo-Warp, CPU or GPU; no Isaac Sim) or "physx"
    (Isaac Sim's PhysX and its RTX viewport; needs the isaacsim package and an RTX GPU).
    physics_hz: physics steps per second (control steps are 1 / control_hz); 120 keeps the probe's
    contact with the rigid body from kicking the probe off the back, as 60 does. headless: physx only,
    false opens the Isaac Sim viewport. joint_stiffness / joint_damping: the arm's joint position
    drives (N m / rad, N m s / rad). ik_damping: the differential-IK damping (lambda).
    skin_stiffness_n_per_m / skin_damping_n_s_per_m: contact stiffness and damping of every shape
    (Newton; MuJoCo solref, see scene.physics_cfg); skin_friction: the friction coefficient of
    gel-coated skin.
    env_spacing_m: distance between cloned environments. table_height_m: the table top the
    patients lie on. cache_dir: where generated USD goes (default: <sonolab cache>/isaaclab).
    """

    physics: str = "newton"
    physics_hz: float = 120.0
    headless: bool = True
    joint_stiffness: float = 2000.0
    joint_damping: float = 100.0
    ik_damping: float = 0.05
    skin_stiffness_n_per_m: float = 2000.0
    skin_damping_n_s_per_m: float = 50.0
    skin_friction: float = 0.05
    env_spacing_m: float = 2.5
    table_height_m: float = 0.7
    cache_dir: str | None = None
