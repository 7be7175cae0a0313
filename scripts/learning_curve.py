"""Learning curves of a run: every checkpoint on training and held-out patients; the last line printed is JSON.

A thin wrapper: the code, its usage and options are in policies/cli/curve.py, which is also the
`sonolab-curve` command of an installed sonolab.
"""

from policies.cli.curve import curve, main

__all__ = ["curve", "main"]  # callers and tests import these from scripts.learning_curve

if __name__ == "__main__":
    main()
