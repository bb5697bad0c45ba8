"""Spend control of several processes on one SQLite file (``thrifty serve --workers N``): two
controls opened ``shared`` on the same file stand for two workers; budgets and rate limits hold
across them, and a gateway holding budgets in its own memory cannot join them."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import pytest

from thrifty.errors import UsageError
from thrifty.spend import BudgetExceeded, RateLimited, admin_ops
from thrifty.spend.control import DbSpendControl
from thrifty.spend.money import usd_to_nanos

from .conftest import MODEL, record


@pytest.fixture
def workers(tmp_path):
    url = f"sqlite:///{tmp_path / 'spend.db'}"
    pair = [DbSpendControl(url, tmp_path / "journal", admin_key="sk-thr-admin-test", shared=True) for _ in range(2)]
    yield pair
    for control in pair:
        asyncio.run(control.close())


def _team_key(control, **kw) -> str:
    admin_ops.create_team(control.db, "eng")
    _rec, secret = admin_ops.create_key(control.db, team_id="eng", **kw)
    return secret


def test_two_workers_never_overshoot_a_budget(workers):
    a = workers[0]
    secret = _team_key(a)
    admin_ops.set_budget(a.db, "team", "eng", amount_usd="1.00", period="daily")
    for w in workers:
        w.reload()
    principal = asyncio.run(a.authenticate(secret))
    told: list[Decimal] = []
    refused: list[BudgetExceeded] = []

    async def one(i: int) -> None:
        control = workers[i % 2]
        try:
            res = await control.admit(principal, MODEL, prompt_tokens=10, max_cost_usd=0.01)
        except BudgetExceeded as exc:
            refused.append(exc)
            await control.settle(None, record(status=429))
            return
        await asyncio.sleep(random.uniform(0, 0.005))  # the upstream call
        cost = round(random.uniform(0.003, 0.01), 6)
        await control.settle(res, record(cost=cost))
        told.append(Decimal(repr(cost)))

    async def storm() -> None:
        await asyncio.gather(*(one(i) for i in range(400)))

    asyncio.run(storm())
    for w in workers:
        w.flush()
    assert told and refused  # $1 at $0.003-$0.01 each allows only part of 400
    assert all(exc.type == "budget_exceeded" for exc in refused)
    nanos, rows = a.db.one("SELECT SUM(cost_nanos), COUNT(*) FROM ledger")
    spent = a.db.one("SELECT SUM(spent_nanos) FROM budget_spend")[0]
    held = a.db.one("SELECT COUNT(*) FROM reservations")[0]
    assert int(nanos) == sum(usd_to_nanos(c) for c in told) == int(spent) <= usd_to_nanos("1.00")
    assert rows == 400 and held == 0
    assert a.db.one("SELECT COUNT(*) FROM journal_marks")[0] == 2  # both workers wrote the ledger


def test_a_refusal_names_what_the_other_worker_holds(workers):
    a, b = workers
    secret = _team_key(a)
    admin_ops.set_budget(a.db, "team", "eng", amount_usd="0.05", period="monthly")
    for w in workers:
        w.reload()
    p = asyncio.run(a.authenticate(secret))

    async def scenario() -> None:
        first = await a.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.04)
        with pytest.raises(BudgetExceeded, match=r"\$0.04 is held"):  # held in the other worker
            await b.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.02)
        await a.settle(first, record(cost=0.01))
        a.flush()  # the ledger batch turns the hold into spend
        await b.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.04)  # exactly reaches the limit
        with pytest.raises(BudgetExceeded):
            await a.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.000000001)

    asyncio.run(scenario())


def test_rate_limits_hold_across_workers(workers):
    a, b = workers
    secret = _team_key(a, rpm=3)
    for w in workers:
        w.reload()
    p = asyncio.run(a.authenticate(secret))

    async def scenario() -> None:
        await a.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.001)
        await b.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.001)
        await a.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.001)
        for w in workers:
            with pytest.raises(RateLimited, match="requests per minute"):
                await w.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.001)

    asyncio.run(scenario())


def test_a_gateway_with_budgets_in_memory_cannot_join_shared_workers(tmp_path, workers):
    with pytest.raises(UsageError, match="--workers N"):
        DbSpendControl(workers[0].db_url, tmp_path / "journal2", admin_key="sk-thr-admin-test")
