"""``python -m benchmarks <name> [args]``: a small dispatcher over the benchmark modules."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "gateway": "benchmarks.gateway",  # gateway overhead vs direct and LiteLLM
    "router": "benchmarks.router",  # router scoring speed
    "multipliers": "benchmarks.multipliers",  # caches, prefix affinity, cascade: saving and risk
    "reports": "benchmarks.reports",  # monthly report on a 1,000,000-row ledger
    "spend": "benchmarks.spend",  # ledger write throughput, budgets under concurrent load
    "pool": "benchmarks.pool",  # auto on a pool of unseen models, learning from feedback
    "routing": "benchmarks.routing",  # CPU per auto decision, side by side with another commit
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print(
            "usage: python -m benchmarks {" + ",".join(BENCHMARKS) + "} [args]  (default: gateway)"
        )
        if argv and argv[0] not in ("-h", "--help"):
            return 2
        if argv:
            return 0
        argv = ["gateway"]
    return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
