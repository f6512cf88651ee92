"""Benchmarks: random-weight models with real architectures, synthetic data, throughput and split-mode runs.

Every script prints a table and writes JSON; `bench/RESULTS.md` records every GPU measurement.
`bench/gpu_session.sh` runs all GPU measurements of one lease.
"""
