"""Test support: a loopback server runner, a counting fake upstream, load generators.

Never imported by the runtime packages; the tests, the demo and the benchmarks use it.
"""
