"""The store's list and spend filters: each set filter narrows, an unset one does not."""

from __future__ import annotations

import asyncio
import dataclasses

from thrifty.spend import admin_ops

from .conftest import record


def test_lists_narrow_by_each_filter_given(control):
    db = control.db
    for team in ("eng", "ops"):
        admin_ops.create_team(db, team)
    admin_ops.create_user(db, "ann", team_id="eng")
    admin_ops.create_user(db, "bob", team_id="ops")
    ann, _ = admin_ops.create_key(db, user_id="ann")
    eng, _ = admin_ops.create_key(db, team_id="eng")
    ops, _ = admin_ops.create_key(db, team_id="ops")
    admin_ops.revoke_key(db, ops["id"])

    def ids(rows: list[dict]) -> set[str]:
        return {r["id"] for r in rows}

    assert ids(admin_ops.list_users(db)) == {"ann", "bob"}
    assert ids(admin_ops.list_users(db, team_id="ops")) == {"bob"}
    assert ids(admin_ops.list_keys(db)) == {ann["id"], eng["id"]}  # revoked left out
    assert ids(admin_ops.list_keys(db, include_revoked=True)) == {ann["id"], eng["id"], ops["id"]}
    assert ids(admin_ops.list_keys(db, team_id="eng")) == {ann["id"], eng["id"]}
    assert ids(admin_ops.list_keys(db, team_id="eng", user_id="ann")) == {ann["id"]}
    assert ids(admin_ops.list_keys(db, team_id="ops")) == set()

    admin_ops.set_budget(db, "team", "eng", amount_usd=10)
    admin_ops.set_budget(db, "team", "ops", amount_usd=20)
    admin_ops.set_budget(db, "user", "ann", amount_usd=5)
    scopes = lambda rows: {(b["scope"], b["scope_id"]) for b in rows}
    assert len(admin_ops.list_budgets(db)) == 3
    assert scopes(admin_ops.list_budgets(db, "team")) == {("team", "eng"), ("team", "ops")}
    assert scopes(admin_ops.list_budgets(db, "team", "ops")) == {("team", "ops")}
    assert len(admin_ops.list_budgets(db, None, "ops")) == 3  # a scope_id means nothing without its scope


def test_spend_narrows_by_time_and_team(control):
    for team, ts, cost in (("eng", 100.0, 0.25), ("eng", 200.0, 0.5), ("ops", 150.0, 1.0)):
        rec = dataclasses.replace(record(cost=cost), team_id=team, ts=ts)
        asyncio.run(control.settle(None, rec))
    control.flush()

    def total(**filters) -> str:
        return admin_ops.spend(control.db, admin_ops.SpendQuery(**filters))["total_cost_usd"]

    assert total() == "1.750000000"
    assert total(team_id="eng") == "0.750000000"
    assert total(since=150) == "1.500000000"
    assert total(since=150, until=200, team_id="ops") == "1.000000000"
    assert total(since=300) == "0.000000000"
