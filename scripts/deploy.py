"""Run an exported policy on a robot with the reference runtime (safety limits from deploy.json).

A thin wrapper: the code, its usage and options are in policies/cli/deploy.py, which is also the
`sonolab-deploy` command of an installed sonolab.
"""

from policies.cli.deploy import check_settings, main, read_secret

__all__ = ["check_settings", "main", "read_secret"]  # callers and tests import these from scripts.deploy

if __name__ == "__main__":
    main()
