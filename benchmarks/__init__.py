"""The performance benchmark: ``python -m benchmarks.run`` (see the README's Performance section)."""
