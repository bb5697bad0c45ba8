"""Spend control on PostgreSQL: migrations, exact holds, and a dead process's holds charged in full on replay."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from thrifty.spend import BudgetExceeded, admin_ops
from thrifty.spend.control import DbSpendControl
from thrifty.spend.db import Database
from thrifty.spend.schema import migrate

from .conftest import MODEL, ROOT, record


def test_holds_are_exact_and_a_crashed_process_is_charged_its_holds_on_replay(tmp_path, pg_url):
    db = Database(pg_url)
    assert migrate(db) == migrate(db)  # idempotent
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng")
    admin_ops.set_budget(db, "team", "eng", amount_usd="0.10", period="daily")

    # A process that holds $0.06 in flight and settles $0.03, then is killed with SIGKILL.
    script = f"""
import asyncio, sys, time, pathlib
sys.path.insert(0, {str(ROOT)!r})
from thrifty.spend.control import DbSpendControl
from tests.spend.conftest import MODEL, record
spend = DbSpendControl({pg_url!r}, pathlib.Path({str(tmp_path / 'a')!r}), admin_key="sk-thr-admin-pg")
async def main():
    p = await spend.authenticate({secret!r})
    await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.06, request_id="in-flight")
    done = await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.04)
    await spend.settle(done, record("settled-before-crash", cost=0.03))
    print("ready", flush=True)
    time.sleep(60)
asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.readline().strip() == b"ready"
    assert db.one("SELECT COUNT(*) FROM reservations")[0] >= 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    survivor = DbSpendControl(pg_url, tmp_path / "a", admin_key="sk-thr-admin-pg")
    try:
        assert survivor.replayed >= 0
        assert db.one("SELECT COUNT(*) FROM reservations")[0] == 0  # no hold of the dead process is left
        assert db.one("SELECT cost_nanos FROM ledger WHERE request_id = 'settled-before-crash'") == (30_000_000,)
        # The one in flight may have been served upstream: charged its hold in full, flagged.
        lost = db.all("SELECT request_id, cost_nanos, status, error_type, team_id FROM ledger"
                      " WHERE request_id <> 'settled-before-crash'")
        assert lost == [("in-flight:lost", 60_000_000, 502, "replica_died", "eng")]

        async def storm():
            p = await survivor.authenticate(secret)
            ok = 0

            async def one(i):
                nonlocal ok
                try:
                    res = await survivor.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.002)
                except BudgetExceeded:
                    return
                await asyncio.sleep(0.001 * (i % 7))
                await survivor.settle(res, record(cost=0.002))
                ok += 1

            await asyncio.gather(*(one(i) for i in range(200)))
            return ok

        ok = asyncio.run(storm())
        survivor.flush()
        spent = db.one("SELECT spent_nanos FROM budget_spend")[0]
        assert ok == 5 and spent == 100_000_000  # (0.10 - 0.03 - 0.06) / 0.002: exactly to the limit, not beyond
    finally:
        asyncio.run(survivor.close())
        db.close()


def test_rate_limits_are_shared_by_gateways_on_one_database(tmp_path, pg_url):
    from thrifty.spend import RateLimited

    db = Database(pg_url)
    migrate(db)
    admin_ops.create_team(db, "eng", tpm=100)
    _rec, secret = admin_ops.create_key(db, team_id="eng", rpm=5)
    _rec2, other = admin_ops.create_key(db, team_id="eng")
    db.close()
    a = DbSpendControl(pg_url, tmp_path / "a", admin_key="sk-thr-admin-pg")
    b = DbSpendControl(pg_url, tmp_path / "b", admin_key="sk-thr-admin-pg")

    async def scenario():
        admitted, limited = 0, []
        for i in range(8):  # 8 requests alternating over two "gateways": only 5 fit in a minute
            spend = (a, b)[i % 2]
            p = await spend.authenticate(secret)
            try:
                await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.001)
                admitted += 1
            except RateLimited as exc:
                limited.append(exc)
        assert admitted == 5 and len(limited) == 3
        assert "requests per minute" in limited[0].message and int(limited[0].headers["retry-after"]) >= 1
        # team tokens per minute: prompt tokens at admission, completion tokens after the ledger batch
        q = await a.authenticate(other)
        res = await a.admit(q, MODEL, prompt_tokens=40, max_cost_usd=0.001)  # team: 5 + 40 = 45
        await a.settle(res, record(cost=0.0, completion_tokens=50))  # 95
        a.flush()
        with pytest.raises(RateLimited, match="team 'eng' tokens per minute"):
            await b.admit(await b.authenticate(other), MODEL, prompt_tokens=10, max_cost_usd=0.001)

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(a.close())
        asyncio.run(b.close())


def test_database_down_fails_closed_with_a_clear_error(tmp_path, pg_url):
    from thrifty.spend import SpendUnavailable

    db = Database(pg_url)
    migrate(db)
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng")
    admin_ops.set_budget(db, "team", "eng", amount_usd=1, period="daily")
    db.close()
    spend = DbSpendControl(pg_url, tmp_path / "a", admin_key="sk-thr-admin-pg")

    async def scenario():
        p = await spend.authenticate(secret)
        await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.01)
        await spend.pool.close()
        spend.pool._url = "postgresql://postgres@127.0.0.1:1/unreachable"  # the database goes away
        with pytest.raises(SpendUnavailable, match="cannot reach its database") as info:
            await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.01)
        assert info.value.status == 503 and info.value.headers["retry-after"]

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(spend.close())


def test_cancelled_admits_give_their_holds_back(tmp_path, pg_url):
    db = Database(pg_url)
    migrate(db)
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng")
    admin_ops.set_budget(db, "team", "eng", amount_usd=1, period="daily")
    spend = DbSpendControl(pg_url, tmp_path / "a", admin_key="sk-thr-admin-pg")

    async def scenario():
        p = await spend.authenticate(secret)
        tasks = [asyncio.create_task(spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.01)) for _ in range(30)]
        await asyncio.sleep(0)  # the first call is on its way to PostgreSQL
        for task in tasks:
            task.cancel()  # clients gone
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(100):  # the call in flight completes, then the holds it took are given back
            await asyncio.sleep(0.05)
            if not spend.budgets._busy and db.one("SELECT COUNT(*) FROM reservations")[0] == 0:
                break
        # every cancelled hold was released: the whole budget is available again
        res = await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=1.0)
        assert res.token is not None

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(spend.close())
        db.close()
