"""sonolab simulator: patients, ultrasound rendering, robots and backends (batched torch code)."""

import os

# Back large CPU tensors with transparent huge pages (read by torch's allocator at its first large
# allocation). The renderer reads patient volumes at scattered positions; with 4 KiB pages most
# lookups miss the TLB, which costs 25-50 % of a render on a 2-core CPU (BENCHMARKS.md).
# Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
