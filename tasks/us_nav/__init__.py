"""`us_nav`: a robot-held probe navigates to a requested standard plane of the lumbar spine;
`us_nav_state` is the same task with the relative goal pose instead of images (a fast baseline).
Both register here (`tasks.registry`)."""

from __future__ import annotations

from tasks.registry import TaskSpec, register
from tasks.us_nav import contract
from tasks.us_nav.config import UsNavCfg
from tasks.us_nav.env import UsNavEnv
from tasks.us_nav.expert import make_expert

DEPLOY = "tasks.us_nav.deploy"
COMMON = dict(
    env_class=UsNavEnv,
    config_class=UsNavCfg,
    expert=make_expert,
    summary=contract.summary,
    metrics=contract.METRICS,
    drawing="tasks.us_nav.drawing:GoalDrawing",
    controller=f"{DEPLOY}:Controller",
    deployment_spec=f"{DEPLOY}:deployment_spec",
    deploy_contract=f"{DEPLOY}:deploy_contract",
    sim_session="tasks.us_nav.contract:sim_session",
)
# Image policies that transfer to anatomy they have not seen (BENCHMARKS.md, "us_nav on unseen
# anatomy"): every episode images with its own gain, dynamic range, frequency, tissue and speckle
# draw, the goal image with another, so matching pixels does not find the goal; biplane imaging
# (the plane across the image plane beside it), so the elevation offset is seen as a shift; the
# probe starts within 2 cm left-right, 1 cm head-foot and 0.6 rad of the goal plane (the search
# after a first survey has found the level: the phantoms' levels lie 20 mm apart on the skin on
# average, and a probe started half a level away sees the next level, which looks like the goal).
TRANSFER = {
    "observation": {"randomize_imaging": True, "planes": 2},
    "start": {"around": "goal", "half_extent_m": (0.02, 0.01), "yaw_rad": (-0.6, 0.6)},
}
register(
    TaskSpec(
        name="us_nav",
        gym_id="Sonolab-UsNav-v0",
        agents={"ppo": "us_nav/ppo", "diffusion": "us_nav/diffusion", "distill": "us_nav/distill"},
        variant={"name": "us_nav", **TRANSFER},
        **COMMON,
    )
)
register(
    TaskSpec(
        name="us_nav_state",
        gym_id="Sonolab-UsNavState-v0",
        agents={"ppo": "us_nav_state/ppo", "diffusion": "us_nav_state/diffusion", "distill": "us_nav_state/distill"},
        variant={"name": "us_nav_state", "observation": {"images": False}},
        **COMMON,
    )
)
