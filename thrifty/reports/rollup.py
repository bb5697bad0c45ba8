"""Daily pre-aggregates of the ledger, so a month's report reads thousands of rows, not millions.

``report_daily`` holds only closed days (before today, UTC); queries read whole
closed days from it and everything else (today, partial days at a range's
edges) from the ledger itself, so a report is always current. :func:`refresh`
adds the days closed since the last call. Records can land late (the ledger is
written in batches; a crashed gateway's journal is replayed on restart), so
each refresh first compares the rollup's request count with the ledger's (one
indexed count); on a mismatch it recounts the days that differ.
"""

from __future__ import annotations

import time
from decimal import Decimal

from thrifty.reports.tables import ensure_tables, get_state, set_state
from thrifty.spend.db import Database

DAY = 86_400
WATERMARK = "daily_rollup_from"  # the first day not yet final
DIMENSIONS = ("key_id", "user_id", "team_id", "tags", "served_model", "provider")
MEASURES = (
    ("requests", "COUNT(*)"),
    ("errors", "SUM(CASE WHEN status >= 400 OR status IS NULL THEN 1 ELSE 0 END)"),
    ("cache_hits", "SUM(cache_hit)"),
    ("prompt_tokens", "SUM(prompt_tokens)"),
    ("completion_tokens", "SUM(completion_tokens)"),
    ("cached_tokens", "SUM(cached_tokens)"),
    ("cost_nanos", "SUM(cost_nanos)"),
    ("frontier_cost_nanos", "SUM(frontier_cost_nanos)"),
    ("latency_ms", "SUM(COALESCE(latency_ms, 0))"),
)
DAY_SQL = f"CAST(FLOOR(ts / {DAY}) AS BIGINT) * {DAY}"


def day_start(ts: float) -> int:
    return int(ts // DAY) * DAY


def closed_until(db: Database) -> int | None:
    """The first day the rollup does not hold (it holds every closed day before it)."""
    mark = get_state(db, WATERMARK)
    return int(mark) if mark is not None else None


def _aggregate(db: Database, lo: float, hi: float) -> list[tuple]:
    """The rollup rows of the ledger records with ``lo <= ts < hi``."""
    dims = ", ".join(DIMENSIONS)
    return db.all(
        f"SELECT {DAY_SQL}, {dims}, {', '.join(expr for _, expr in MEASURES)}"
        f" FROM ledger WHERE ts >= ? AND ts < ? GROUP BY {DAY_SQL}, {dims}",
        (lo, hi),
    )


def refresh(db: Database, now: float | None = None) -> dict[str, float]:
    """Bring the rollup up to the start of today; returns what it did (for the benchmark and logs).

    The ledger is read first, without a lock (the gateway's ledger writer keeps writing);
    only the rollup's own rows are written in a short transaction. A record that lands in a
    closed day meanwhile is caught by the next refresh's count check.
    """
    ensure_tables(db)
    now = time.time() if now is None else now
    today = day_start(now)
    t0 = time.perf_counter()
    mark = closed_until(db)
    recount: list[int] = []
    if mark is not None:
        rolled = db.one("SELECT COALESCE(SUM(requests), 0) FROM report_daily WHERE day < ?", (mark,))[0]
        actual = db.one("SELECT COUNT(*) FROM ledger WHERE ts < ?", (mark,))[0]
        if int(rolled) != int(actual):  # late records in closed days: recount the days that differ
            have = {int(d): int(n) for d, n in db.all("SELECT day, SUM(requests) FROM report_daily GROUP BY day")}
            counts = db.all(f"SELECT {DAY_SQL}, COUNT(*) FROM ledger WHERE ts < ? GROUP BY {DAY_SQL}", (mark,))
            recount = [int(d) for d, n in counts if have.get(int(d), 0) != int(n)]
            recount += [d for d in have if d < mark and d not in {int(c[0]) for c in counts}]
    start = -(1 << 62) if mark is None else mark
    rows = [r for day in recount for r in _aggregate(db, day, day + DAY)]
    if start < today:
        rows += _aggregate(db, start, today)
    if not rows and not recount and (mark is not None and mark >= today):
        return {"recounted_days": 0.0, "rows": 0.0, "seconds": time.perf_counter() - t0}
    columns = ", ".join(("day", *DIMENSIONS, *(m for m, _ in MEASURES)))
    with db.transaction():
        if db.postgres:
            db.execute("SELECT pg_advisory_xact_lock(727275)")  # one refresher at a time
        if closed_until(db) != mark:
            return {"recounted_days": 0.0, "rows": 0.0, "seconds": time.perf_counter() - t0}  # another won
        if mark is None:
            db.execute("DELETE FROM report_daily")
        else:
            db.execute("DELETE FROM report_daily WHERE day >= ?", (mark,))
            for day in recount:
                db.execute("DELETE FROM report_daily WHERE day = ?", (day,))
        if rows:
            marks = ", ".join("?" * (1 + len(DIMENSIONS) + len(MEASURES)))
            db.executemany(f"INSERT INTO report_daily ({columns}) VALUES ({marks})",
                           [tuple(int(v) if isinstance(v, Decimal) else v for v in r) for r in rows])
        if mark is None or mark < today:
            set_state(db, WATERMARK, str(today))
    return {"recounted_days": float(len(recount)), "rows": float(len(rows)), "seconds": time.perf_counter() - t0}
