"""Benchmarks that print one JSON object (record results in BENCHMARKS.md).

A thin wrapper: the code, its usage and options are in policies/cli/benchmark.py, which is also the
`sonolab-benchmark` command of an installed sonolab.
"""

from policies.cli.benchmark import main

if __name__ == "__main__":
    main()
