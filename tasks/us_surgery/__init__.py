"""`us_surgery`: a robot drills a pedicle-screw pilot hole under ultrasound held by a second robot;
`us_surgery_state` is the same task with the tracked poses only (no images). Both register here
(`tasks.registry`)."""

from __future__ import annotations

from tasks.registry import TaskSpec, register
from tasks.us_surgery import contract
from tasks.us_surgery.config import UsSurgeryCfg
from tasks.us_surgery.env import UsSurgeryEnv
from tasks.us_surgery.expert import make_expert

COMMON = dict(
    env_class=UsSurgeryEnv,
    config_class=UsSurgeryCfg,
    expert=make_expert,
    summary=contract.summary,
    metrics=contract.METRICS,
    drawing="tasks.us_surgery.drawing:SurgeryDrawing",
)  # no robot deployment yet: export and deploy refuse it by name (`tasks.registry.deployment_part`)
register(TaskSpec(name="us_surgery", gym_id="Sonolab-UsSurgery-v0", agents={"ppo": "us_surgery/ppo"}, **COMMON))
register(
    TaskSpec(
        name="us_surgery_state",
        gym_id="Sonolab-UsSurgeryState-v0",
        agents={"ppo": "us_surgery_state/ppo"},
        variant={"name": "us_surgery_state", "observation": {"images": False}},
        **COMMON,
    )
)
