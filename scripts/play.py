"""Run a trained policy: every environment plays one episode; print the metrics as JSON.

A thin wrapper: the code, its usage and options are in policies/cli/play.py, which is also the
`sonolab-play` command of an installed sonolab.
"""

from policies.cli.play import main, play

__all__ = ["main", "play"]  # callers and tests import these from scripts.play

if __name__ == "__main__":
    main()
