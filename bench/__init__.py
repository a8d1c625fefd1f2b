"""Benchmarks of numba_dsconv (run ``python -m bench``; pytest-benchmark suites in this folder)."""
