"""Spend control through its public protocol: keys, budgets under concurrency, rate limits, ledger."""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal

import pytest

from thrifty.spend import AuthError, BudgetExceeded, RateLimited, admin_ops
from thrifty.spend.money import usd_to_nanos

from .conftest import MODEL, record


def _key(control, **kw):
    admin_ops.create_team(control.db, "eng")
    _rec, secret = admin_ops.create_key(control.db, team_id="eng", **kw)
    control.reload()
    return _rec, secret


def test_keys_authenticate_by_hash_and_revoked_or_expired_keys_fail(control):
    rec, secret = _key(control, tags=["proj-x"])
    row = control.db.one("SELECT key_hash, prefix FROM api_keys WHERE id = ?", (rec["id"],))
    assert secret not in row and secret not in str(admin_ops.list_keys(control.db))  # only the hash is stored
    p = asyncio.run(control.authenticate(f"Bearer {secret}"))
    assert (p.key_id, p.team_id, p.tags) == (rec["id"], "eng", ("proj-x",))
    assert asyncio.run(control.authenticate(secret)).key_id == rec["id"]  # x-api-key form
    for bad in (None, "", "Bearer ", "Bearer sk-thr-nope", secret + "x"):
        with pytest.raises(AuthError):
            asyncio.run(control.authenticate(bad))
    admin_ops.revoke_key(control.db, rec["id"])
    control.reload()
    with pytest.raises(AuthError, match="revoked"):
        asyncio.run(control.authenticate(secret))
    _r2, old = admin_ops.create_key(control.db, team_id="eng", expires_at=time.time() - 1)
    control.reload()
    with pytest.raises(AuthError, match="expired"):
        asyncio.run(control.authenticate(old))
    assert asyncio.run(control.authenticate("Bearer sk-thr-admin-test")).is_admin


def test_changes_made_elsewhere_are_picked_up(control):
    rec, secret = _key(control)
    from thrifty.spend.db import Database

    other = Database(control.db_url)  # e.g. the CLI, in another process
    admin_ops.revoke_key(other, rec["id"])
    other.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            asyncio.run(control.authenticate(secret))
        except AuthError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("revocation made in another connection was not picked up")


async def _storm(control, principal, n: int, max_cost: float, actual) -> tuple[list[Decimal], list[BudgetExceeded]]:
    """n concurrent requests: admit, a random upstream delay, settle at ``actual(i)`` (or fail)."""
    done: list[Decimal] = []
    refused: list[BudgetExceeded] = []

    async def one(i: int) -> None:
        try:
            res = await control.admit(principal, MODEL, prompt_tokens=100, max_cost_usd=max_cost)
        except BudgetExceeded as exc:
            refused.append(exc)
            return
        await asyncio.sleep(random.random() * 0.01)
        cost = actual(i)
        if cost is None:  # upstream failed: settled with zero cost, hold released
            await control.settle(res, record(cost=0.0, status=502, error_type="upstream_error"))
            return
        await control.settle(res, record(cost=cost))
        done.append(Decimal(repr(cost)))

    await asyncio.gather(*(one(i) for i in range(n)))
    return done, refused


def test_500_concurrent_requests_never_overshoot_the_budget(control):
    _rec, secret = _key(control)
    admin_ops.set_budget(control.db, "team", "eng", amount_usd="1.00", period="daily")
    control.reload()
    principal = asyncio.run(control.authenticate(secret))
    # each may cost up to $0.01 and costs $0.003-$0.01 (or fails); $1 allows only part of 500
    costs = [None if i % 10 == 0 else round(random.uniform(0.003, 0.01), 6) for i in range(500)]
    done, refused = asyncio.run(_storm(control, principal, 500, 0.01, costs.__getitem__))
    control.flush()
    assert refused and done
    for exc in refused:
        assert exc.status == 429 and exc.type == "budget_exceeded"
        assert "team 'eng' daily budget" in exc.message and "resets at" in exc.message
        assert exc.resets_at and exc.headers["x-thrifty-budget-id"]
    total = control.db.one("SELECT SUM(cost_nanos), COUNT(*) FROM ledger")
    assert int(total[0]) <= usd_to_nanos("1.00")
    assert int(total[0]) == sum(usd_to_nanos(c) for c in done)  # ledger == what clients were told
    assert total[1] == 500 - len(refused)  # failures are in the ledger too
    budget = admin_ops.list_budgets(control.db)[0]
    assert Decimal(budget["spent_usd"]) == sum(done)


def test_a_request_that_could_exceed_is_refused_and_release_on_failure_frees_the_hold(control):
    _rec, secret = _key(control)
    admin_ops.set_budget(control.db, "team", "eng", amount_usd="0.05", period="monthly")
    control.reload()
    p = asyncio.run(control.authenticate(secret))

    async def scenario():
        first = await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.04)
        with pytest.raises(BudgetExceeded):  # 0.04 held + 0.02 > 0.05
            await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.02)
        await control.settle(first, record(cost=0.0, status=500))  # failure releases everything
        second = await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.05)
        await control.settle(second, record(cost=0.03))
        await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.02)  # exactly reaches the limit
        with pytest.raises(BudgetExceeded, match="resets at"):
            await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.000000001)

    asyncio.run(scenario())


def test_key_user_and_team_budgets_all_apply(control):
    admin_ops.create_team(control.db, "eng")
    admin_ops.create_user(control.db, "ann", team_id="eng")
    rec, secret = admin_ops.create_key(control.db, user_id="ann")
    admin_ops.set_budget(control.db, "team", "eng", amount_usd=10, period="monthly")
    admin_ops.set_budget(control.db, "user", "ann", amount_usd=1, period="weekly")
    admin_ops.set_budget(control.db, "key", rec["id"], amount_usd=5, period="daily")
    control.reload()
    p = asyncio.run(control.authenticate(secret))
    assert p.user_id == "ann" and p.team_id == "eng"
    with pytest.raises(BudgetExceeded, match="user 'ann' weekly budget") as info:
        asyncio.run(control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=2))
    assert info.value.scope == "user"


def test_fixed_window_budget_ends(control):
    rec, secret = _key(control)
    admin_ops.set_budget(control.db, "key", rec["id"], amount_usd=1, period="window",
                     window_start=time.time() - 100, window_end=time.time() - 1)
    control.reload()
    p = asyncio.run(control.authenticate(secret))
    with pytest.raises(BudgetExceeded, match="ended at"):
        asyncio.run(control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.01))


def test_rate_limits_per_key_and_team(control):
    admin_ops.create_team(control.db, "eng", tpm=1000)
    _r, secret = admin_ops.create_key(control.db, team_id="eng", rpm=3)
    _r2, other = admin_ops.create_key(control.db, team_id="eng")
    control.reload()
    p = asyncio.run(control.authenticate(secret))
    q = asyncio.run(control.authenticate(other))

    async def scenario():
        for _ in range(3):
            await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.001)
        with pytest.raises(RateLimited, match="requests per minute") as info:
            await control.admit(p, MODEL, prompt_tokens=10, max_cost_usd=0.001)
        assert int(info.value.headers["retry-after"]) >= 1
        res = await control.admit(q, MODEL, prompt_tokens=900, max_cost_usd=0.001)  # team: 930 of 1000 tokens
        await control.settle(res, record(cost=0.0, completion_tokens=60))  # 990
        with pytest.raises(RateLimited, match="team 'eng' tokens per minute"):
            await control.admit(q, MODEL, prompt_tokens=20, max_cost_usd=0.001)
        with pytest.raises(RateLimited, match="exceed"):
            await control.admit(q, MODEL, prompt_tokens=5000, max_cost_usd=0.001)

    asyncio.run(scenario())


def test_settle_twice_counts_once_and_unauthenticated_records_are_kept(control):
    _rec, secret = _key(control)
    admin_ops.set_budget(control.db, "team", "eng", amount_usd=1, period="daily")
    control.reload()
    p = asyncio.run(control.authenticate(secret))

    async def scenario():
        res = await control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.5)
        r = record("req-1", cost=0.25)
        await control.settle(res, r)
        await control.settle(res, r)
        await control.settle(None, record("req-2", cost=0.0, status=401, error_type="authentication_error"))

    asyncio.run(scenario())
    control.flush()
    rows = control.db.all("SELECT request_id, cost_nanos, team_id FROM ledger ORDER BY request_id")
    assert rows == [("req-1", 250_000_000, "eng"), ("req-2", 0, None)]
    assert admin_ops.list_budgets(control.db)[0]["spent_usd"] == "0.250000000"


def test_an_invalid_cost_still_reaches_the_ledger_charged_at_its_hold(control):
    _rec, secret = _key(control)
    admin_ops.set_budget(control.db, "team", "eng", amount_usd=1, period="daily")
    control.reload()
    p = asyncio.run(control.authenticate(secret))

    async def scenario():
        res = await control.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.2)
        await control.settle(res, record("nan-cost", cost=float("nan")))

    asyncio.run(scenario())
    control.flush()
    assert control.db.one("SELECT cost_nanos FROM ledger WHERE request_id = 'nan-cost'") == (200_000_000,)


def test_from_config_errors_are_one_clear_line(tmp_path):
    from thrifty.errors import UsageError
    from thrifty.spend import from_config

    with pytest.raises(UsageError, match="unknown \\[spend\\] setting"):
        from_config({"databse_url": "x"}, tmp_path)
    with pytest.raises(UsageError, match=r"could not start on postgresql://u:\*\*\*@127.0.0.1:1/x"):
        from_config({"database_url": "postgresql://u:secret@127.0.0.1:1/x"}, tmp_path)
