"""pytest-benchmark suite settings: benchmarks are not tests of correctness, so warnings stay warnings."""
