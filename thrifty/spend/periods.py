"""Budget periods in UTC: where the current one started and when it resets."""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime, timedelta

PERIODS = ("daily", "weekly", "monthly", "window")
# The unix seconds a datetime can show: 0001-01-01 to 9999-12-31 UTC.
MIN_TS, MAX_TS = -62135596800.0, 253402300799.0


def check_time(ts: float, text: object = None) -> float:
    """``ts`` if it is a finite time between the years 1 and 9999, else ValueError."""
    if not (math.isfinite(ts) and MIN_TS <= ts <= MAX_TS):
        shown = ts if text is None else text
        raise ValueError(f"not a time: {shown!r} (out of range; use ISO 8601, e.g. 2026-11-21T10:00:00Z)")
    return ts


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def period_bounds(
    period: str, now: float, window_start: float | None = None, window_end: float | None = None
) -> tuple[int, float | None]:
    """(start, end) unix seconds of the period containing ``now``.

    ``daily`` resets at 00:00 UTC, ``weekly`` on Monday 00:00 UTC, ``monthly``
    on the 1st at 00:00 UTC. A ``window`` is one fixed span from
    ``window_start`` to ``window_end`` (``None``: open-ended); it never resets.
    """
    if period == "window":
        return int(window_start or 0), window_end
    day = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    else:
        raise ValueError(f"unknown budget period {period!r}; expected one of {', '.join(PERIODS)}")
    return int(start.timestamp()), end.timestamp()


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (``...Z``)."""
    if ts is None:
        return None
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """ISO 8601 (``2026-11-21``, ``2026-11-21T10:00:00Z``) or unix seconds, to unix seconds."""
    try:
        return check_time(float(text), text)
    except ValueError:
        pass
    value = text.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, e.g. 2026-11-21T10:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
