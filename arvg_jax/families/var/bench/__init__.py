"""Benchmarks: end-to-end generation throughput, GEMM micro-benchmarks, profiles, reports.

Used by `arvg bench` (`arvg_jax/commands/bench.py`); importing this package imports jax.
"""
