"""Record demonstrations of a task as a LeRobotDataset v3.0 folder; the last line printed is its path.

A thin wrapper: the code, its usage and options are in policies/cli/record.py, which is also the
`sonolab-record` command of an installed sonolab.
"""

from policies.cli.record import main, record_demos

__all__ = ["main", "record_demos"]  # callers and tests import these from scripts.record

if __name__ == "__main__":
    main()
