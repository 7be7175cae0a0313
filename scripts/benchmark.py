"""Benchmarks that print one JSON object (record results in BENCHMARKS.md).

    python scripts/benchmark.py render --probe linear --batch 100 --height 200 --width 150 --json
    python scripts/benchmark.py env --task <any registered task> --num-envs 256 --steps 200 --json

    python scripts/benchmark.py train --task us_nav_state --nproc 2 --num-envs 256 --iterations 10 --json

`render` times the B-mode renderer on the default phantom (1 mm) with probe poses spread over
the lumbar back, after a warm-up that includes compilation. `env` times whole environment steps
(actions, IK, contact, rendering, rewards, resets) of a task as conf/ composes it, under
uniformly random actions, after warm-up steps that include compilation. `train` runs
scripts/train.py for --iterations (torchrun for --nproc > 1; --num-envs per process) into a
temporary folder, times the iterations after --warmup from its TensorBoard log and reports the
environment steps per second over all processes with what each process communicates per
iteration: the model's parameters x 4 bytes per gradient all-reduce, the normaliser statistics,
the episode statistics, and the environment state gathered for a checkpoint.

The code is policies/cli/benchmark.py, also the `sonolab-benchmark` command of an installed sonolab.
"""

from policies.cli.benchmark import main

if __name__ == "__main__":
    main()
