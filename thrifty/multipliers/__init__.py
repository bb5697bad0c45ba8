"""Compute multipliers: ways to make each dollar buy more, each measured (``python -m benchmarks multipliers``).

* :mod:`.cache` exact response cache (SQLite or Redis), scoped per tenant;
* :mod:`.semantic` semantic cache over the router's embedder, same tenant only;
* :mod:`.affinity` prefix-affinity routing over a pool of self-hosted deployments;
* :mod:`.cascade` cheap model first, escalate when a check fails.
"""
