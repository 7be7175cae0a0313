"""The Isaac Lab scene of a batch: per environment a table, one patient's body as a static
collider, each robot of the `SceneCfg` as an articulation and a contact sensor on each probe
tool against the body.

Frames. Isaac Lab's world is z up; sonolab's patient frame is the CT's (a prone patient's back
faces -y). Each environment's local frame is the patient frame turned -90 deg about x (patient
-y is up, patient +z, the head, is +y) with the patient's anchor point at `IsaacLabScene.anchor_local`
(above the table centre). Each robot base keeps its pose relative to the anchor (SceneRobotCfg),
so one placement serves every patient. Patients are assigned to environments in contiguous blocks
(Isaac Lab's sequential cloning): `env_patients`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import isaaclab.sim as sim_utils
import numpy as np
import torch
from isaaclab.actuators import ImplicitActuatorCfg
from isaaclab.assets import ArticulationCfg, AssetBaseCfg
from isaaclab.cloner.cloner_strategies import sequential
from isaaclab.scene import InteractiveScene, InteractiveSceneCfg
from isaaclab.sensors import ContactSensorCfg

from sim.anatomy.patient import Patient
from sim.anatomy.surface import body_mesh
from sim.backends.isaaclab import assets
from sim.backends.isaaclab.config import IsaacLabCfg
from sim.backends.scene import SceneCfg, SceneRobotCfg
from sim.robot.arm import Arm
from sim.transforms import matrix_to_quat, quat_to_matrix

# local (z up) <- patient: x stays, patient y -> -z, patient z -> +y
LOCAL_FROM_PATIENT = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
TABLE_SIZE_M = (0.6, 0.9)  # x (across the patient), y (along the patient)


def env_patients(num_patients: int, num_envs: int) -> np.ndarray:
    """(num_envs,) the patient of each environment, as Isaac Lab's sequential cloner assigns them."""
    return sequential(np.ones(num_patients), num_envs)


def body_usds(
    patients: Sequence[Patient], anchor: str, table_height_m: float, cache: Path
) -> tuple[list[str], np.ndarray]:
    """One static-collider USD per patient and the point (3,) where every patient's anchor sits in
    its environment's local frame: above the table centre, high enough that the deepest front of
    any patient rests on the table top."""
    meshes = [body_mesh(p) for p in patients]
    centres = [p.landmarks[anchor].centre for p in patients]
    depth = max(float(np.asarray(m.vertices)[:, 1].max() - c[1]) for m, c in zip(meshes, centres))
    origin = np.array([0.0, 0.0, table_height_m + depth])
    paths = []
    for p, mesh, centre in zip(patients, meshes, centres):
        mesh.vertices = (np.asarray(mesh.vertices) - centre) @ LOCAL_FROM_PATIENT.T + origin
        paths.append(str(assets.body_usd(mesh, cache, p.name)))
    return paths, origin


def physics_cfg(cfg: IsaacLabCfg, device: str):
    """The physics of `cfg.physics`: Newton kit-less, or PhysX (Isaac Sim must be running)."""
    if cfg.physics == "physx":
        from isaaclab_physx.physics import PhysxCfg

        return PhysxCfg()
    from isaaclab_newton.physics import MJWarpSolverCfg, NewtonCfg
    from isaaclab_newton.physics.newton_collision_cfg import NewtonCollisionPipelineCfg
    from isaaclab_newton.physics.newton_manager_cfg import NewtonShapeCfg

    # Newton's own collision pipeline: MuJoCo's would treat the concave back as its convex hull.
    solver = MJWarpSolverCfg(
        njmax=400, nconmax=200, integrator="implicitfast", cone="pyramidal", use_mujoco_contacts=False
    )
    # Newton turns each shape's ke / kd into MuJoCo's solref (time constant 2 / kd, damping ratio
    # kd / 2 sqrt(1 / ke)). The pressing force is set mostly by the arm's drives pushing toward a
    # target 2 mm inside the skin (measured: tens of newtons), little by these; a friction
    # coefficient of gel-coated skin lets the pressed probe slide over the back.
    shapes = NewtonShapeCfg(ke=cfg.skin_stiffness_n_per_m, kd=cfg.skin_damping_n_s_per_m, mu=cfg.skin_friction)
    return NewtonCfg(
        solver_cfg=solver,
        collision_cfg=NewtonCollisionPipelineCfg(),
        default_shape_cfg=shapes,
        use_cuda_graph=device.startswith("cuda"),
    )


def robot_key(robot: str) -> str:
    """The scene entry (and prim name `Robot_<robot>`) of scene robot `robot`."""
    return f"robot_{robot}"


def contact_key(tool: str) -> str:
    """The scene entry of the contact sensor on probe tool `tool`."""
    return f"contact_{tool}"


def _robot_cfg(robot: SceneRobotCfg, arm: Arm, origin: np.ndarray, cfg: IsaacLabCfg, cache: Path) -> ArticulationCfg:
    """The articulation of scene robot `robot` (kinematic model `arm`), its base placed relative
    to the anchor point `origin` (3,) of the environment's local frame."""
    rot = LOCAL_FROM_PATIENT @ _matrix(np.asarray(robot.base_quat_wxyz))
    base_position = LOCAL_FROM_PATIENT @ np.asarray(robot.base_position_m) + origin
    return ArticulationCfg(
        prim_path=f"{{ENV_REGEX_NS}}/Robot_{robot.name}",
        spawn=sim_utils.UsdFileCfg(
            usd_path=str(assets.robot_usd(arm.urdf_path, cache, robot.tool_frame)), activate_contact_sensors=True
        ),
        init_state=ArticulationCfg.InitialStateCfg(
            pos=tuple(base_position),
            rot=tuple(_quat_xyzw(rot)),
            joint_pos=dict(zip(arm.joint_names, arm.home.tolist())),
        ),
        actuators={
            "arm": ImplicitActuatorCfg(
                joint_names_expr=list(arm.joint_names),
                stiffness=cfg.joint_stiffness,
                damping=cfg.joint_damping,
                joint_velocity_limit=dict(zip(arm.joint_names, arm.velocity.tolist())),
            )
        },
    )


def scene_cfgs(
    patients: Sequence[Patient],
    scene: SceneCfg,
    arms: Mapping[str, Arm],
    num_envs: int,
    device: str,
    cfg: IsaacLabCfg,
    cache: Path,
) -> tuple[sim_utils.SimulationCfg, InteractiveSceneCfg, np.ndarray]:
    """(simulation config, scene config, anchor point in the local frame) for num_envs
    environments of `scene` (arms: {robot: its kinematic model}); the USD they reference is
    generated into `cache`. Entries: `robot_key(robot)` per robot, `contact_key(tool)` per probe
    tool (a contact sensor on the body carrying the tool frame, against the patient's body),
    "table" and "body".
    """
    bodies, origin = body_usds(patients, scene.anchor, cfg.table_height_m, cache)
    scene_cfg = InteractiveSceneCfg(num_envs=num_envs, env_spacing=cfg.env_spacing_m)
    for robot in scene.robots:
        arm = arms[robot.name]
        setattr(scene_cfg, robot_key(robot.name), _robot_cfg(robot, arm, origin, cfg, cache))
        if robot.tool.kind == "probe":
            body = assets.tool_body(arm.urdf_path, robot.tool_frame)
            sensor = ContactSensorCfg(
                prim_path=f"{{ENV_REGEX_NS}}/Robot_{robot.name}/{body}",
                filter_shape_prim_expr=["{ENV_REGEX_NS}/Body/mesh"],
                update_period=0.0,
                history_length=1,
            )
            setattr(scene_cfg, contact_key(robot.tool.name), sensor)
    scene_cfg.table = AssetBaseCfg(
        prim_path="{ENV_REGEX_NS}/Table",
        spawn=sim_utils.CuboidCfg(
            size=(*TABLE_SIZE_M, cfg.table_height_m), collision_props=sim_utils.UsdPhysicsCollisionCfg()
        ),
        init_state=AssetBaseCfg.InitialStateCfg(pos=(0.0, 0.0, cfg.table_height_m / 2)),
    )
    scene_cfg.body = AssetBaseCfg(prim_path="{ENV_REGEX_NS}/Body", spawn=sim_utils.MultiUsdFileCfg(usd_path=bodies))
    # No gravity: the arms are the only moving bodies and their controllers compensate gravity, as
    # an iiwa's does; with gravity the position drives sag and the probe hangs centimetres low.
    sim_cfg = sim_utils.SimulationCfg(
        dt=1.0 / cfg.physics_hz, device=device, gravity=(0.0, 0.0, 0.0), physics=physics_cfg(cfg, device)
    )
    return sim_cfg, scene_cfg, origin


def open_scene(
    sim_cfg: sim_utils.SimulationCfg, scene_cfg: InteractiveSceneCfg
) -> tuple[sim_utils.SimulationContext, InteractiveScene]:
    """The simulation (one per process) and its started scene."""
    sim = sim_utils.SimulationContext(sim_cfg)
    scene = InteractiveScene(scene_cfg)
    sim.reset()
    return sim, scene


def _matrix(quat_wxyz: np.ndarray) -> np.ndarray:
    return quat_to_matrix(torch.as_tensor(np.asarray(quat_wxyz, np.float64))[None])[0].numpy()


def _quat_xyzw(rot: np.ndarray) -> np.ndarray:
    """Isaac Lab 3 quaternions are (x, y, z, w)."""
    w, x, y, z = matrix_to_quat(torch.as_tensor(rot)[None])[0].tolist()
    return np.array([x, y, z, w])
