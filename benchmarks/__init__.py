"""Benchmarks: one command each, run with ``python -m benchmarks``."""
