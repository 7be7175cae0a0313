"""Run an exported policy on a robot with the reference runtime (safety limits from deploy.json).

    python scripts/deploy.py checkpoint=last task=us_nav_state                       # the simulator
    python scripts/deploy.py checkpoint=last task=us_nav_state deploy.robot=network  # a robot PC over TCP
    python scripts/deploy.py checkpoint=last task=us_nav_state deploy.role=robot_pc  # the simulator as that robot PC
    python scripts/deploy.py checkpoint=last deploy.robot=ros2 deploy.session=session.npz deploy.realtime=true

The policy is <run>/exported (scripts/export.py). With deploy.robot=sim (or role=robot_pc) the
simulator is environment 0 of a one-environment run over `patient`/`split`/`seed`, so a sim run
reproduces `play.py num_envs=1 trajectory=true`. Each episode's trajectory goes to
<run>/trajectories/deploy_<robot>_<timestamp>_<episode>.npz; the last line printed is a JSON
summary with each episode's status ("stopped: <reason>" when the robot was stopped). Over the
network the robot PC (role=robot_pc) enforces its own limits from deploy.json; off loopback both
sides need deploy.secret (or deploy.secret_file) and the runtime deploy.allow.

The code is policies/cli/deploy.py, which is also the `sonolab-deploy` command of an installed sonolab.
"""

from policies.cli.deploy import check_settings, main, read_secret

__all__ = ["check_settings", "main", "read_secret"]  # callers and tests import these from scripts.deploy

if __name__ == "__main__":
    main()
