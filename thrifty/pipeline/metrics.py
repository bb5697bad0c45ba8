"""Prometheus metrics in the text exposition format.

Dict-backed counters and histograms: recording is a dict update, so it costs next to nothing
on the hot path (prometheus_client's locks and label objects cost several microseconds per
sample). Every label is bounded by the config (endpoints, configured models, teams, budgets,
deployments, a fixed set of reasons): never a key id, a user id or a request id.

A process's counts are :meth:`Metrics.state`, a plain JSON-able dict, so that the workers of
``thrifty serve --workers N`` can share them (:mod:`thrifty.gateway.metrics_share`) and the
worker that answers a scrape renders their sum (:func:`render`). Gauges that describe shared
state (budgets) are not summed: the scraped worker reads them once (:class:`Gauge`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Why a request was refused (``thrifty_rejections_total{reason}``), from its error type.
REJECTION_REASONS = {
    "budget_exceeded": "budget",
    "rate_limit_error": "rate_limit",
    "policy_error": "policy",
    "authentication_error": "auth",
    "permission_error": "permission",
    "request_too_large": "body_too_large",
}

State = dict[str, list[list]]  # family name -> [[*label values, value]] (histograms: [..., counts, sum])


def rejection_reason(status: int, error_type: str | None) -> str | None:
    """The bounded reason a request with ``status`` and ``error_type`` was refused, or None when
    it was not a refusal (an answer, a client that went away, a stream cut at its hold)."""
    if status < 400 or status == 499:
        return None
    reason = REJECTION_REASONS.get(error_type or "")
    if reason is not None:
        return reason
    if status == 413:
        return "body_too_large"
    if status == 503 and error_type == "api_error":
        return "spend_unavailable"
    if status >= 500:
        return "upstream"
    return "invalid_request"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    return str(v) if type(v) is int else repr(float(v))


class Counter:
    """A counter family: label values -> running total."""

    __slots__ = ("help", "labels", "name", "values")
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...] = (), amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def state(self) -> list[list]:
        return [[*k, v] for k, v in self.values.items()]

    def merge(self, rows: list[list], into: dict) -> None:
        n = len(self.labels)
        for row in rows:
            key = tuple(row[:n])
            into[key] = into.get(key, 0) + row[n]

    def lines(self, values: dict) -> Iterable[str]:
        for key, v in values.items():
            yield f"{self.name}{_labels(self.labels, key)} {_num(v)}"


class Histogram:
    """A histogram family: label values -> [count per bucket ..., count above the last, sum]."""

    __slots__ = ("buckets", "help", "labels", "name", "values")
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = BUCKETS
    ) -> None:
        self.name, self.help, self.labels, self.buckets = name, help, labels, buckets
        self.values: dict[tuple[str, ...], list] = {}

    def observe(self, key: tuple[str, ...], seconds: float) -> None:
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect.bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def state(self) -> list[list]:
        return [[*k, row[:-1], row[-1]] for k, row in self.values.items()]

    def add(self, key: tuple[str, ...], counts: list[int], total: float, into: dict | None = None) -> None:
        """Add ``counts`` per bucket (and above the last) and their sum ``total`` to ``key``'s row
        (of this family, or of ``into``, a merge's result)."""
        values = self.values if into is None else into
        row = values.get(key)
        if row is None:
            values[key] = [*counts, total]
            return
        for i, c in enumerate(counts):
            row[i] += c
        row[-1] += total

    def merge(self, rows: list[list], into: dict) -> None:
        n = len(self.labels)
        for row in rows:
            self.add(tuple(row[:n]), row[n], row[n + 1], into)

    def lines(self, values: dict) -> Iterable[str]:
        for key, row in values.items():
            cum = 0
            for bound, n in zip(self.buckets, row):
                cum += n
                le = f'le="{bound}"'
                yield f"{self.name}_bucket{_labels(self.labels, key, le)} {cum}"
            cum += row[len(self.buckets)]
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labels, key, inf)} {cum}"
            yield f"{self.name}_sum{_labels(self.labels, key)} {_num(row[-1])}"
            yield f"{self.name}_count{_labels(self.labels, key)} {cum}"


@dataclass(frozen=True, slots=True)
class Gauge:
    """A gauge read at scrape time from shared state (not summed across workers)."""

    name: str
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], float]


class Metrics:
    """This process's counts; one attribute per family, recorded where the event happens."""

    def __init__(self) -> None:
        self.requests = Counter(
            "thrifty_requests_total",
            "Requests by endpoint, served model and status.",
            ("endpoint", "model", "status"),
        )
        self.duration = Histogram(
            "thrifty_request_duration_seconds",
            "Gateway request latency (to the answer's end) by endpoint and served model.",
            ("endpoint", "model"),
        )
        self.rejections = Counter(
            "thrifty_rejections_total",
            "Requests refused, by reason (budget, rate_limit, policy, auth, permission, "
            "invalid_request, body_too_large, spend_unavailable, upstream).",
            ("reason",),
        )
        self.cost = Counter("thrifty_cost_usd_total", "Cost of served requests in USD.", ("model",))
        self.team_cost = Counter(
            "thrifty_team_cost_usd_total",
            "Cost of served requests in USD by team ('-': keys without a team).",
            ("team",),
        )
        self.frontier_cost = Counter(
            "thrifty_frontier_cost_usd_total",
            "What the same requests would have cost on the default frontier model.",
            ("model",),
        )
        self.tokens = Counter(
            "thrifty_tokens_total", "Tokens by model and kind (prompt, completion).", ("model", "kind")
        )
        self.upstream_latency = Histogram(
            "thrifty_upstream_latency_seconds",
            "Successful upstream calls (non-streamed: the whole answer) by model.",
            ("model",),
        )
        self.ttft = Histogram(
            "thrifty_time_to_first_token_seconds",
            "Streamed upstream calls: time to the first chunk, by model.",
            ("model",),
        )
        self.cache = Counter(
            "thrifty_cache_lookups_total",
            "Response cache lookups by result (exact, semantic: hits; miss).",
            ("result",),
        )
        self.cache_saved = Counter(
            "thrifty_cache_saved_usd_total",
            "What the requests answered from the cache cost when they were first served, in USD.",
        )
        self.upstream_errors = Counter(
            "thrifty_upstream_errors_total",
            "Failed upstream calls by deployment and type.",
            ("deployment", "type"),
        )
        self.retries = Counter("thrifty_retries_total", "Upstream retries.")
        self.fallbacks = Counter("thrifty_fallbacks_total", "Requests served by a fallback model.")
        self.judge = Counter(
            "thrifty_judge_total",
            "Judge grades of routed answers by outcome (graded, nonsense, failed, skipped_budget, "
            "skipped_backlog).",
            ("outcome",),
        )
        # Learned routing (thrifty.pipeline.routing): labels this process loaded by source,
        # decisions by kind, and exploration's extra expected cost.
        self.router_labels = Counter(
            "thrifty_router_labels_total", "Ratings of routed answers loaded by this router, by source.",
            ("source",),
        )
        self.router_decisions = Counter(
            "thrifty_router_decisions_total",
            "Routing decisions by kind (packaged: the packaged router's own; learned; explored).",
            ("kind",),
        )
        self.router_exploration_cost = Counter(
            "thrifty_router_exploration_cost_usd_total",
            "Exploration's extra expected cost over the best estimate's choice, in USD.",
        )
        self.families: tuple[Counter | Histogram, ...] = (
            self.requests, self.duration, self.rejections, self.cost, self.team_cost,
            self.frontier_cost, self.tokens, self.upstream_latency, self.ttft, self.cache,
            self.cache_saved, self.upstream_errors, self.retries, self.fallbacks, self.judge,
            self.router_labels, self.router_decisions, self.router_exploration_cost,
        )  # fmt: skip
        # endpoint, model, status, team -> [count, cost, frontier cost, prompt tokens,
        # completion tokens, seconds, [count per duration bucket..., above the last]]
        self._finished: dict[tuple[str, str, int, str | None], list] = {}
        for source in ("feedback", "judge"):  # present from the first scrape, at 0
            self.router_labels.inc((source,), 0)
        for kind in ("packaged", "learned", "explored"):
            self.router_decisions.inc((kind,), 0)

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """One finished request that spent nothing (any outcome)."""
        self.finished(endpoint, model, status, seconds)

    def finished(
        self,
        endpoint: str,
        model: str,
        status: int,
        seconds: float,
        team: str | None = None,
        cost: float = 0.0,
        frontier: float = 0.0,
        prompt: int = 0,
        completion: int = 0,
    ) -> None:
        """One finished request; ``team`` given: what it cost (and would have on the frontier
        model) and its tokens. One row update per request: the families it feeds (requests,
        duration, cost, team cost, frontier cost, tokens) are summed from the rows when read."""
        key = (endpoint, model, status, team)
        row = self._finished.get(key)
        if row is None:
            row = self._finished[key] = [0, 0.0, 0.0, 0, 0, 0.0, [0] * (len(self.duration.buckets) + 1)]
        row[0] += 1
        row[5] += seconds
        row[6][bisect.bisect_left(self.duration.buckets, seconds)] += 1
        if team is not None:
            row[1] += cost
            row[2] += frontier
            row[3] += prompt
            row[4] += completion

    def _fold(self) -> None:
        """Move the rows :meth:`finished` keeps into the families they feed."""
        rows, self._finished = self._finished, {}
        for (endpoint, model, status, team), (n, cost, frontier, prompt, completion, seconds, counts) in rows.items():
            self.requests.inc((endpoint, model, str(status)), n)
            self.duration.add((endpoint, model), counts, seconds)
            if team is not None:
                self.cost.inc((model,), cost)
                self.team_cost.inc((team,), cost)
                self.frontier_cost.inc((model,), frontier)
                self.tokens.inc((model, "prompt"), prompt)
                self.tokens.inc((model, "completion"), completion)

    def state(self) -> State:
        """This process's counts as plain data (for the other workers' scrapes)."""
        self._fold()
        return {f.name: f.state() for f in self.families}

    def render(self, others: Iterable[State] = (), gauges: Iterable[Gauge] = ()) -> bytes:
        """The exposition text of this process's counts plus ``others`` (other workers'), then
        ``gauges``. Each family's HELP and TYPE appear once, also when it has no samples yet."""
        merged: dict[str, dict] = {f.name: {} for f in self.families}
        for state in (self.state(), *others):
            for f in self.families:
                rows = state.get(f.name)
                if rows:
                    f.merge(rows, merged[f.name])
        out: list[str] = []
        for f in self.families:
            out.append(f"# HELP {f.name} {f.help}\n# TYPE {f.name} {f.kind}")
            values = merged[f.name]
            if not values and not f.labels:
                values = {(): 0} if f.kind == "counter" else values
            out.extend(f.lines(values))
        for g in gauges:
            out.append(f"# HELP {g.name} {g.help}\n# TYPE {g.name} gauge")
            out.extend(f"{g.name}{_labels(g.labels, k)} {_num(v)}" for k, v in g.values.items())
        return ("\n".join(out) + "\n").encode()

