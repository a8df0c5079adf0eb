"""Run logging: hooks and the benchmark logger."""
