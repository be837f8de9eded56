"""The performance benchmark: ``python -m benchmarks.run`` (see docs/performance.md)."""
