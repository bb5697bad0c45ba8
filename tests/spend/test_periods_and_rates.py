import asyncio
from datetime import UTC, datetime

import pytest

from thrifty.spend import BudgetExceeded, RateLimited, admin_ops
from thrifty.spend.periods import iso, parse_time, period_bounds
from thrifty.spend.ratelimit import Check, MemoryRateLimiter, wait_seconds

from .conftest import MODEL, record


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize("period, now, start, end", [
    ("daily", "2026-11-21T23:59:59", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"),
    ("weekly", "2026-11-21T10:00:00", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),  # Monday to Monday
    ("monthly", "2026-12-31T12:00:00", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("monthly", "2028-02-29T12:00:00", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
])
def test_period_bounds_in_utc(period, now, start, end):
    s, e = period_bounds(period, ts(now))
    assert (iso(s), iso(e)) == (start, end)


def test_parse_time():
    assert parse_time("2026-11-21") == ts("2026-11-21T00:00:00")
    assert parse_time("2026-11-21T10:00:00Z") == ts("2026-11-21T10:00:00")
    assert parse_time("1700000000") == 1_700_000_000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("tomorrow")


def test_sliding_window_counts_the_previous_minute_by_its_overlap():
    assert wait_seconds(previous=100, current=0, limit=100, amount=1, now=60 * 1000 + 0.0) is not None
    assert wait_seconds(previous=100, current=0, limit=100, amount=50, now=60 * 1000 + 30) is None  # 50 + 50
    assert wait_seconds(previous=100, current=0, limit=100, amount=51, now=60 * 1000 + 30) >= 1
    limiter = MemoryRateLimiter()
    check = Check("key:k:rpm", 2, 1, "key k requests per minute")

    async def go():
        await limiter.take([check], 60 * 5 + 10)
        await limiter.take([check], 60 * 5 + 20)
        with pytest.raises(RateLimited):
            await limiter.take([check], 60 * 5 + 30)
        await limiter.take([check], 60 * 7 + 1)  # two minutes later the window is empty

    asyncio.run(go())


def test_budget_resets_when_its_period_rolls_over(control, monkeypatch):
    import thrifty.spend.control as control_module

    admin_ops.create_team(control.db, "eng")
    _rec, secret = admin_ops.create_key(control.db, team_id="eng")
    admin_ops.set_budget(control.db, "team", "eng", amount_usd="0.10", period="daily")
    control.reload()
    clock = {"now": ts("2026-11-21T23:59:50")}
    monkeypatch.setattr(control_module.time, "time", lambda: clock["now"])

    async def go():
        p = await control.authenticate(secret)
        res = await control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.10)
        await control.settle(res, record(cost=0.10))
        with pytest.raises(BudgetExceeded, match="resets at 2026-11-22T00:00:00Z"):
            await control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.01)
        clock["now"] = ts("2026-11-22T00:00:01")
        await control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.10)  # a new day, a new budget

    asyncio.run(go())
