"""The report: totals, groups, time series, leaderboard and budget burn-down, as plain data.

Every number comes from SQL sums over the ledger (whole days from the daily
rollup, the partial days at the range's edges from the ledger itself), in
integer nano-dollars, so a report agrees with the ledger to the nano-dollar.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from thrifty.reports.filters import MEASURE_NAMES, Filters, bucketed_rows
from thrifty.reports.rollup import DAY, DIMENSIONS, closed_until, refresh
from thrifty.spend.db import Database

HOUR = 3_600
GROUPS = {"team": "team_id", "user": "user_id", "key": "key_id", "model": "served_model",
          "provider": "provider", "tag": "tags"}


@dataclass
class Totals:
    """Sums over a set of ledger records (money in integer nano-dollars)."""

    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0
    frontier_cost_nanos: int = 0
    latency_ms: float = 0.0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Totals:
        ints = [int(v or 0) for v in row[:-1]]
        return cls(*ints, float(row[-1] or 0.0))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def savings_nanos(self) -> int:
        return self.frontier_cost_nanos - self.cost_nanos

    @property
    def savings_pct(self) -> float | None:
        return 100.0 * self.savings_nanos / self.frontier_cost_nanos if self.frontier_cost_nanos else None

    @property
    def usd_per_mtok(self) -> float | None:
        """Average price paid per million tokens (input and output together)."""
        return self.cost_nanos / 1e3 / self.tokens if self.tokens else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(tokens=self.tokens, savings_nanos=self.savings_nanos, savings_pct=self.savings_pct,
                   usd_per_mtok=self.usd_per_mtok)
        return out


@dataclass
class Group:
    name: str | None
    totals: Totals
    share: float = 0.0  # of the report's requests


@dataclass
class Report:
    filters: Filters
    group_by: str
    bucket_seconds: int
    totals: Totals
    groups: list[Group]
    models: list[Group]
    leaderboard: list[Group]
    leaderboard_by: str
    series: dict[int, dict[str, Totals]]  # bucket start -> served model -> totals
    budgets: list[dict[str, Any]] = field(default_factory=list)
    closed_until: int | None = None  # the rollup's first open day (for burn-down series)
    feedback: list[dict[str, Any]] = field(default_factory=list)  # per served model: rated, mean score
    generated_at: float = field(default_factory=time.time)


def _add(acc: dict[Any, list], key: Any, values: Sequence[Any]) -> None:
    cur = acc.get(key)
    if cur is None:
        acc[key] = list(values)
    else:
        for i, v in enumerate(values):
            cur[i] += v


def _groups(acc: dict[Any, list], explode_tags: bool = False) -> list[Group]:
    if explode_tags:  # each record counts once for every tag it has; untagged traffic is its own group
        by_tag: dict[Any, list] = {}
        for raw, values in acc.items():
            for tag in json.loads(raw or "[]") or [None]:
                _add(by_tag, tag, values)
        acc = by_tag
    groups = [Group(k, Totals.from_row(v)) for k, v in acc.items()]
    groups.sort(key=lambda g: (-g.totals.cost_nanos, -g.totals.requests, str(g.name)))
    return groups


def bucket_for(f: Filters) -> int:
    """Hours for ranges up to three days, days beyond."""
    return HOUR if f.until - f.since <= 3 * DAY else DAY


def build_report(db: Database, f: Filters, group_by: str = "team", *, use_rollup: bool = True,
                 with_budgets: bool = True, leaderboard_size: int = 10, now: float | None = None) -> Report:
    """The whole report for ``f``; refreshes the daily rollup first unless ``use_rollup`` is off."""
    if group_by not in GROUPS:
        raise ValueError(f"group by must be one of {', '.join(GROUPS)} (got {group_by!r})")
    closed = None
    if use_rollup:
        refresh(db, now)
        closed = closed_until(db)
    bucket = bucket_for(f)
    source, params = bucketed_rows(f, bucket, closed)
    # One pass: the pre-grouped rows (a few thousand per month from the rollup) are summed here
    # for every view at once, instead of re-reading the ledger once per view.
    rows = db.all(f"SELECT * FROM ({source}) u", params) if source else []
    col = {name: i for i, name in enumerate(("bucket", *DIMENSIONS))}
    n_dims = len(col)
    # The leaderboard ranks users; by keys when grouping by user or when no key names a user.
    lb_by = "user" if group_by != "user" and any(r[col["user_id"]] for r in rows) else "key"
    g_col, lb_col, m_col = col[GROUPS[group_by]], col[GROUPS[lb_by]], col["served_model"]
    total: list = [0] * len(MEASURE_NAMES)
    by_group: dict[Any, list] = {}
    by_model: dict[Any, list] = {}
    by_lb: dict[Any, list] = {}
    by_bucket: dict[tuple[int, str], list] = {}
    for r in rows:
        values = [v or 0 for v in r[n_dims:]]
        for i, v in enumerate(values):
            total[i] += v
        _add(by_group, r[g_col], values)
        _add(by_model, r[m_col], values)
        _add(by_lb, r[lb_col], values)
        _add(by_bucket, (int(r[0]), r[m_col] or "(none)"), values)
    totals = Totals.from_row(total)
    groups = _groups(by_group, explode_tags=group_by == "tag")
    models = _groups(by_model)
    leaderboard = _groups(by_lb)[:leaderboard_size]
    for g in (*groups, *models, *leaderboard):
        g.share = g.totals.requests / totals.requests if totals.requests else 0.0
    series: dict[int, dict[str, Totals]] = {}
    for (b, model), values in sorted(by_bucket.items()):
        series.setdefault(b, {})[model] = Totals.from_row(values)
    report = Report(f, group_by, bucket, totals, groups, models, leaderboard, lb_by, series)
    if with_budgets:
        from thrifty.reports.burndown import burndown

        report.budgets = burndown(db, now=now, team=f.team, user=f.user, key=f.key, closed=closed)
    report.closed_until = closed
    report.feedback = feedback_by_model(db, f)
    return report


def feedback_by_model(db: Database, f: Filters) -> list[dict[str, Any]]:
    """User feedback on the range's requests, per served model: how many were rated, the mean score."""
    from thrifty.reports.tables import ensure_tables

    ensure_tables(db)
    conds, params = f.conditions("l.")
    extra = "".join(f" AND {c}" for c in conds)
    rows = db.all("SELECT l.served_model, COUNT(*), AVG(fb.score), SUM(CASE WHEN fb.score >= 0.5 THEN 1 ELSE 0 END)"
                  " FROM feedback fb JOIN ledger l ON l.request_id = fb.request_id"
                  f" WHERE l.ts >= ? AND l.ts < ?{extra} GROUP BY l.served_model ORDER BY 2 DESC",
                  [f.since, f.until, *params])
    return [{"model": r[0], "rated": int(r[1]), "mean_score": float(r[2]), "positive": int(r[3] or 0)} for r in rows]


def month_range(month: str) -> tuple[float, float]:
    """``2026-11`` -> [Nov 1, Dec 1) in UTC seconds."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"not a month: {month!r} (use YYYY-MM, e.g. 2026-11)") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.timestamp(), end.timestamp()


def with_range(f: Filters, since: float, until: float) -> Filters:
    return replace(f, since=since, until=until)
