"""What a report reads: the ledger records it covers (:class:`Filters`) and those records
summed per time bucket (:func:`bucketed_rows`), from the daily rollup where whole days are
closed and from the ledger itself at the edges. The report and the burn-down both build on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from thrifty.reports.rollup import DAY, DIMENSIONS, MEASURES, day_start

MEASURE_NAMES = tuple(m for m, _ in MEASURES)


@dataclass(frozen=True)
class Filters:
    """Which ledger records a report covers: ``since <= ts < until`` and every set dimension."""

    since: float
    until: float
    team: str | None = None
    user: str | None = None
    key: str | None = None
    model: str | None = None
    provider: str | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if not self.until > self.since:
            raise ValueError("the time range is empty: 'until' must be after 'since'")

    def conditions(self, prefix: str = "") -> tuple[list[str], list[Any]]:
        """SQL conditions (``prefix`` qualifies the ledger's columns in a join) and their parameters."""
        conds, params = [], []
        for column, value in (("team_id", self.team), ("user_id", self.user), ("key_id", self.key),
                              ("served_model", self.model), ("provider", self.provider)):
            if value:
                conds.append(f"{prefix}{column} = ?")
                params.append(value)
        if self.tag:
            conds.append(f"{prefix}tags LIKE ?")
            params.append("%" + json.dumps(self.tag) + "%")
        return conds, params

    def rated_rows(self, db: Any, columns: str, where: str, *, join: str = "LEFT JOIN") -> list[tuple]:
        """``columns`` of the ledger rows (``l``) in the window that match ``where`` and these
        filters, oldest first, each with its feedback (``f``, joined by ``join``)."""
        from thrifty.reports.tables import ensure_tables

        ensure_tables(db)
        conds, params = self.conditions("l.")
        extra = "".join(f" AND {c}" for c in conds)
        return db.all(
            f"SELECT {columns} FROM ledger l {join} feedback f ON f.request_id = l.request_id"
            f" WHERE l.ts >= ? AND l.ts < ? AND {where}{extra} ORDER BY l.ts",
            [self.since, self.until, *params],
        )


def bucketed_rows(f: Filters, bucket: int, closed: int | None) -> tuple[str, list[Any]]:
    """A subquery of (bucket, dimensions..., measures...) rows covering exactly ``f``: whole days
    before ``closed`` from the rollup (when given and bucketing by day), the rest from the ledger."""
    conds, fparams = f.conditions()
    extra = "".join(f" AND {c}" for c in conds)
    dims = ", ".join(DIMENSIONS)
    parts: list[str] = []
    params: list[Any] = []
    ranges = [(f.since, f.until)]
    if closed is not None and bucket == DAY:
        d0, d1 = day_start(f.since + DAY - 1e-6), min(day_start(f.until), closed)
        if d0 < d1:
            parts.append(f"SELECT day AS bucket, {dims}, {', '.join(MEASURE_NAMES)} FROM report_daily"
                         f" WHERE day >= ? AND day < ?{extra}")
            params += [d0, d1, *fparams]
            ranges = [(f.since, float(d0)), (float(d1), f.until)]
    bucket_sql = f"CAST(FLOOR(ts / {bucket}) AS BIGINT) * {bucket}"
    for lo, hi in ranges:
        if lo < hi:
            measures = ", ".join(f"{e} AS {m}" for m, e in MEASURES)
            parts.append(f"SELECT {bucket_sql} AS bucket, {dims}, {measures} FROM ledger"
                         f" WHERE ts >= ? AND ts < ?{extra} GROUP BY {bucket_sql}, {dims}")
            params += [lo, hi, *fparams]
    return " UNION ALL ".join(parts), params
