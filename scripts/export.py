"""Export a trained policy for robots: policy.onnx, policy.pt, deploy.json, samples.npz.

A thin wrapper: the code, its usage and options are in policies/cli/export.py, which is also the
`sonolab-export` command of an installed sonolab.
"""

from policies.cli.export import export, main

__all__ = ["export", "main"]  # callers and tests import these from scripts.export

if __name__ == "__main__":
    main()
