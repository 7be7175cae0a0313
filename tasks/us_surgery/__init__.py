"""`us_surgery`: a robot drills a pedicle-screw pilot hole under ultrasound held by a second robot;
`us_surgery_state` is the same task with the tracked poses only (no images). Both register here
(`tasks.registry`), with their robot deployment: the drill arm (`tasks.us_surgery.deploy`)."""

from __future__ import annotations

from tasks.registry import TaskSpec, register
from tasks.us_surgery import contract
from tasks.us_surgery.config import UsSurgeryCfg
from tasks.us_surgery.env import UsSurgeryEnv
from tasks.us_surgery.expert import make_expert

DEPLOY = "tasks.us_surgery.deploy"
COMMON = dict(
    env_class=UsSurgeryEnv,
    config_class=UsSurgeryCfg,
    expert=make_expert,
    summary=contract.summary,
    metrics=contract.METRICS,
    drawing="tasks.us_surgery.drawing:SurgeryDrawing",
    controller=f"{DEPLOY}:Controller",
    deployment_spec=f"{DEPLOY}:deployment_spec",
    deploy_contract=f"{DEPLOY}:deploy_contract",
    sim_session="tasks.us_surgery.contract:sim_session",
    sim_robot=f"{DEPLOY}:SimDrillRobot",  # the robot is the drill arm, not the snapshot's primary tool (the probe)
)
register(
    TaskSpec(
        name="us_surgery",
        gym_id="Sonolab-UsSurgery-v0",
        agents={"ppo": "us_surgery/ppo", "diffusion": "us_surgery/diffusion"},
        **COMMON,
    )
)
register(
    TaskSpec(
        name="us_surgery_state",
        gym_id="Sonolab-UsSurgeryState-v0",
        agents={"ppo": "us_surgery_state/ppo", "diffusion": "us_surgery_state/diffusion"},
        variant={"name": "us_surgery_state", "observation": {"images": False}},
        **COMMON,
    )
)
