"""sonolab simulator: patients, ultrasound rendering, robots and backends (batched torch code)."""
