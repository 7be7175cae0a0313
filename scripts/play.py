"""Run a trained policy: every environment plays one episode; print the metrics as JSON.

    python scripts/play.py task=us_nav_state checkpoint=last num_envs=256 split=test
    python scripts/play.py task=us_nav checkpoint=logs/us_nav/<run>/model_999.pt video=true
    python scripts/play.py task=us_nav_state patient=totalseg_example split=test   # the real CT
    python scripts/play.py task=us_nav_state checkpoint=last viewer=true              # interactive

The task, learner, agent and probe settings come from the run's config.yaml (what the policy was trained
with); patients, split, num_envs, seed and device from the command line. video=true writes
<run>/videos/play_<split>.mp4 (the 3-D scene of environment 0 beside its ultrasound image,
rendered off screen). The last line printed is one JSON object: success_rate,
pos_err_mm_mean, ang_err_deg_mean, episodes and more. viewer=true instead opens an interactive
3-D window (needs a display; keys in sim/viz/viewer.py) and prints viewer_steps when closed.
trajectory=true writes environment 0's first episode (policy inputs, actions, probe poses, joint
angles per step) to <run>/trajectories/play_<split>.npz; scripts/deploy.py on the simulator
reproduces it.

The code is policies/cli/play.py, which is also the `sonolab-play` command of an installed sonolab.
"""

from policies.cli.play import main, play

__all__ = ["main", "play"]  # callers and tests import these from scripts.play

if __name__ == "__main__":
    main()
