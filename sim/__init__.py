"""sonolab simulator: patients, ultrasound rendering, robots and backends (batched torch code).

Importing it changes nothing outside the package: process-wide settings (glibc's allocator,
`sim.memory.keep_freed_memory`) are applied where they are needed, by the `Renderer`.
"""
