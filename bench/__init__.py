"""Benchmarks: each prints its figures; bench/RESULTS.md records them with the CPU."""
