"""reinstate: a hold taken again after a restart for money already committed upstream (a line
in a provider's batch) counts against its budgets without a rate limit or a refusal, and its
settlement charges the budget and releases it; recorded: which request ids the ledger holds.
On SQLite (holds in memory) and PostgreSQL (holds in the reservations table)."""

from __future__ import annotations

import asyncio

import pytest

from thrifty.spend import BudgetExceeded, admin_ops
from thrifty.spend.control import DbSpendControl
from thrifty.spend.db import Database
from thrifty.spend.schema import migrate

from .conftest import MODEL, record


def _scenario(spend: DbSpendControl, db: Database, secret: str, budget_id: str) -> None:
    async def run() -> None:
        p = await spend.authenticate(secret)
        # Never refused, even past the limit ($0.10), and no rate limit (rpm = 2 on the key: both
        # admits below get through it).
        first = await spend.reinstate(p, MODEL, max_cost_usd=0.06)
        second = await spend.reinstate(p, MODEL, max_cost_usd=0.06, ttl=90_000)
        assert first.token is not None and second.token is not None
        with pytest.raises(BudgetExceeded) as refused:  # the reinstated holds count
            await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.001)
        assert "held by requests in flight" in refused.value.message
        await spend.settle(first, record("line-0", cost=0.01))
        await spend.settle(second, record("line-1", cost=0.02))
        spend.flush()
        assert await spend.recorded(["line-0", "line-1", "line-2", "line-0"]) == {"line-0", "line-1"}
        assert await spend.recorded([]) == set()
        # Settled: the holds are gone and the budget counts the real costs.
        ok = await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.05)
        assert ok.token is not None
        await spend.settle(ok, record("after", cost=0.0))
        spend.flush()

    asyncio.run(run())
    spent = db.one("SELECT SUM(spent_nanos) FROM budget_spend WHERE budget_id = ?", (budget_id,))[0]
    assert spent == 30_000_000


def _setup(db: Database) -> tuple[str, str]:
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng", rpm=2)
    budget = admin_ops.set_budget(db, "team", "eng", amount_usd="0.10", period="daily")
    return secret, budget["id"]


def test_reinstate_on_sqlite(control):
    secret, budget_id = _setup(control.db)
    control.reload()
    _scenario(control, control.db, secret, budget_id)


def test_reinstate_on_postgres(tmp_path, pg_url):
    db = Database(pg_url)
    migrate(db)
    secret, budget_id = _setup(db)
    spend = DbSpendControl(pg_url, tmp_path / "a", admin_key="sk-thr-admin-pg")
    try:
        _scenario(spend, db, secret, budget_id)
        assert db.one("SELECT COUNT(*) FROM reservations")[0] == 0
    finally:
        asyncio.run(spend.close())
        db.close()
