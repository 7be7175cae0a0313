"""Export a trained policy for robots: policy.onnx, policy.pt, deploy.json, samples.npz.

    python scripts/export.py task=us_nav_state checkpoint=last
    python scripts/export.py task=us_nav checkpoint=logs/us_nav/<run>/model_499.pt export.max_force_n=15

Writes <run>/exported/ (atomically: only a folder whose graphs matched the training model is put
in place) and prints that folder as the last line. The task, learner, agent and probe come from the run's
config.yaml; safety settings from `export.*` (conf/config.yaml), each within the hard bounds of
sim/robot/safety.py (a NaN, infinite or too large limit exits with an error, status 2).

The code is policies/cli/export.py, which is also the `sonolab-export` command of an installed sonolab.
"""

from policies.cli.export import export, main

__all__ = ["export", "main"]  # callers and tests import these from scripts.export

if __name__ == "__main__":
    main()
