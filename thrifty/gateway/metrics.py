"""Prometheus metrics in the text exposition format.

A few dict-backed counters and one latency histogram: incrementing is a dict
update, so it costs next to nothing on the hot path (prometheus_client's locks
and label objects cost several microseconds per sample).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    esc = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return ",".join(f'{n}="{v}"' for n, v in zip(names, esc))


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # endpoint, model, status
        self.cost: dict[str, float] = defaultdict(float)
        self.frontier_cost: dict[str, float] = defaultdict(float)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)  # model, kind
        self.upstream_errors: dict[tuple[str, str], int] = defaultdict(int)  # deployment, type
        self.retries = 0
        self.fallbacks = 0
        self.latency_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        # Learned routing (thrifty.gateway.routing): labels this process loaded by source,
        # decisions by kind, and exploration's extra expected cost (keys seeded: never added
        # while a scrape iterates).
        self.router_labels: dict[str, int] = {"feedback": 0, "judge": 0}
        self.router_decisions: dict[str, int] = {"packaged": 0, "learned": 0, "explored": 0}
        self.router_exploration_cost = 0.0

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, model, str(status))] += 1
        self.latency_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def render(self) -> bytes:
        out: list[str] = []

        def family(name: str, kind: str, help: str) -> None:
            out.append(f"# HELP {name} {help}\n# TYPE {name} {kind}")

        family(
            "thrifty_requests_total", "counter", "Requests by endpoint, served model and status."
        )
        for key, n in self.requests.items():
            out.append(
                f"thrifty_requests_total{{{_labels(('endpoint', 'model', 'status'), key)}}} {n}"
            )
        family("thrifty_cost_usd_total", "counter", "Cost of served requests in USD.")
        for model, v in self.cost.items():
            out.append(f"thrifty_cost_usd_total{{{_labels(('model',), (model,))}}} {v:.10g}")
        family(
            "thrifty_frontier_cost_usd_total",
            "counter",
            "What the same requests would have cost on the default frontier model.",
        )
        for model, v in self.frontier_cost.items():
            out.append(
                f"thrifty_frontier_cost_usd_total{{{_labels(('model',), (model,))}}} {v:.10g}"
            )
        family("thrifty_tokens_total", "counter", "Tokens by model and kind (prompt, completion).")
        for key, n in self.tokens.items():
            out.append(f"thrifty_tokens_total{{{_labels(('model', 'kind'), key)}}} {n}")
        family(
            "thrifty_upstream_errors_total",
            "counter",
            "Failed upstream calls by deployment and type.",
        )
        for key, n in self.upstream_errors.items():
            out.append(
                f"thrifty_upstream_errors_total{{{_labels(('deployment', 'type'), key)}}} {n}"
            )
        family("thrifty_retries_total", "counter", "Upstream retries.")
        out.append(f"thrifty_retries_total {self.retries}")
        family("thrifty_fallbacks_total", "counter", "Requests served by a fallback model.")
        out.append(f"thrifty_fallbacks_total {self.fallbacks}")
        family("thrifty_request_duration_seconds", "histogram", "Gateway request latency.")
        cum = 0
        for bound, n in zip(BUCKETS, self.latency_counts):
            cum += n
            out.append(f'thrifty_request_duration_seconds_bucket{{le="{bound}"}} {cum}')
        cum += self.latency_counts[-1]
        out.append(f'thrifty_request_duration_seconds_bucket{{le="+Inf"}} {cum}')
        out.append(f"thrifty_request_duration_seconds_sum {self.latency_sum:.6f}")
        out.append(f"thrifty_request_duration_seconds_count {cum}")
        self._render_router(out, family)
        return ("\n".join(out) + "\n").encode()

    def _render_router(self, out: list[str], family: Any) -> None:
        family("thrifty_router_labels_total", "counter", "Router labels loaded by this process, by source.")
        for source, n in list(self.router_labels.items()):
            out.append(f"thrifty_router_labels_total{{{_labels(('source',), (source,))}}} {n}")
        family("thrifty_router_decisions_total", "counter",
               "Auto-routing decisions: the packaged router's, learned, or exploring.")
        for kind, n in list(self.router_decisions.items()):
            out.append(f"thrifty_router_decisions_total{{{_labels(('kind',), (kind,))}}} {n}")
        family("thrifty_router_exploration_cost_usd_total", "counter",
               "Exploring decisions' extra expected cost over the best estimate, in USD.")
        out.append(f"thrifty_router_exploration_cost_usd_total {self.router_exploration_cost:.10g}")
