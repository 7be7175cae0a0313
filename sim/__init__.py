"""sonolab simulator: patients, ultrasound rendering, robots and backends (batched torch code)."""

from sim.memory import keep_freed_memory

keep_freed_memory()
