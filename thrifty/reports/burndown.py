"""Budget burn-down: at the current rate, when does each budget run out?

The rate is the scope's ledger spend over the trailing week (or since the
period started, if that is shorter; at least an hour), so the projection
follows changes such as routing taking hold. A budget
that runs out after its period resets is reported as lasting the period, with no date
(nor is a date more than a year away, for budgets with no end).
Budgets, limits and spend come from spend control's own store (its public
``list_budgets``), so the figures are the ones it enforces.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from thrifty.reports.filters import Filters, bucketed_rows
from thrifty.spend.db import Database
from thrifty.spend.money import usd_to_nanos
from thrifty.spend.periods import iso, parse_time

_SCOPE_COLUMN = {"key": "key_id", "user": "user_id", "team": "team_id"}


def burndown(db: Database, *, now: float | None = None, team: str | None = None, user: str | None = None,
             key: str | None = None, closed: int | None = None) -> list[dict[str, Any]]:
    """One entry per budget (optionally only those of a team, user or key) with its projection."""
    from thrifty.spend import admin_ops

    now = time.time() if now is None else now
    out = []
    for b in admin_ops.list_budgets(db):
        wanted = {"team": team, "user": user, "key": key}[b["scope"]] if b["scope"] in ("team", "user", "key") else None
        if (team or user or key) and wanted != b["scope_id"]:
            continue
        limit = usd_to_nanos(Decimal(b["amount_usd"]))
        spent = usd_to_nanos(Decimal(b["spent_usd"]))
        start = parse_time(b["period_start"])
        end = parse_time(b["resets_at"]) if b.get("resets_at") else (
            parse_time(b["window_end"]) if b.get("window_end") else None)
        column = _SCOPE_COLUMN.get(b["scope"])
        window = max(min(RATE_WINDOW, now - start), 3600.0)
        if column is None:
            rate = spent / window
        else:  # the scope's ledger spend over the trailing window (at most a week, within the period)
            rate = _spent(db, column, b["scope_id"], max(start, now - window), now, closed) / window
        remaining = limit - spent
        if remaining <= 0:
            runs_out, status = now, "exhausted"
        elif rate <= 0:
            runs_out, status = None, "no spend yet"
        else:
            runs_out = now + remaining / rate
            if end is None:  # an open-ended budget: a run-out date decades away is no forecast
                status = "runs out" if runs_out < now + YEAR_SECONDS else "not within a year"
            else:
                status = "runs out before reset" if runs_out < end else "lasts the period"
        out.append({
            "id": b["id"], "scope": b["scope"], "scope_id": b["scope_id"], "period": b["period"],
            "limit_nanos": limit, "spent_nanos": spent, "remaining_nanos": remaining,
            "used_pct": 100.0 * spent / limit if limit else None,
            "period_start": start, "period_end": end, "usd_per_day": rate * DAY_SECONDS / 1e9,
            "runs_out_at": runs_out,  # the projection's end, for charts; shown only when it is a forecast:
            "runs_out": iso(runs_out) if runs_out is not None and status not in QUIET else None,
            "status": status, "column": column,
        })
    return out


DAY_SECONDS = 86_400
YEAR_SECONDS = 365 * DAY_SECONDS
QUIET = ("lasts the period", "not within a year")  # no run-out date is shown
RATE_WINDOW = 7 * DAY_SECONDS


def _spent(db: Database, column: str, scope_id: str, since: float, until: float, closed: int | None) -> int:
    scope = {"team_id": "team", "user_id": "user", "key_id": "key"}[column]
    source, params = bucketed_rows(Filters(since=since, until=until, **{scope: scope_id}), DAY_SECONDS, closed)
    return int(db.one(f"SELECT COALESCE(SUM(cost_nanos), 0) FROM ({source}) u", params)[0])


def cumulative_spend(db: Database, budget: dict[str, Any], now: float | None = None,
                     closed: int | None = None) -> list[tuple[float, int]]:
    """(time, spend so far in nano-dollars) at the end of each hour of the budget's current period."""
    now = time.time() if now is None else now
    start = budget["period_start"]
    if now <= start or budget["column"] is None:
        return []
    scope = {"team_id": "team", "user_id": "user", "key_id": "key"}[budget["column"]]
    f = Filters(since=start, until=now, **{scope: budget["scope_id"]})
    bucket = 3_600 if now - start <= 3 * DAY_SECONDS else DAY_SECONDS
    source, params = bucketed_rows(f, bucket, closed)
    points, total = [(start, 0)], 0
    for b, cost in db.all(f"SELECT bucket, SUM(cost_nanos) FROM ({source}) u GROUP BY bucket ORDER BY bucket", params):
        points.append((max(float(b), start), total))  # flat until this bucket, then its spend
        total += int(cost or 0)
        points.append((min(float(b) + bucket, now), total))
    points.append((now, total))
    return points
