"""``thrifty router learn`` then ``status`` on a hand-made ledger, on SQLite and PostgreSQL alike:
teams, the window, explored rows and their cost, labels completed from feedback."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from thrifty.cli import main
from thrifty.router.online import CONTEXT_DIM, encode_context

DAY = 86_400


def _fill(url: str) -> dict:
    from thrifty.reports.tables import ensure_tables
    from thrifty.spend.db import Database
    from thrifty.spend.schema import migrate

    db = Database(url)
    migrate(db)
    ensure_tables(db)
    rng = np.random.default_rng(0)
    now = time.time()
    rows, feedback = [], []
    # team a: model m1 routed 6 times (2 explored), m2 4 times (1 explored); team b: m1 once.
    plan = [("a", "m1", 0)] * 4 + [("a", "m1", 1)] * 2 + [("a", "m2", 0)] * 3 + [("a", "m2", 1)] + [("b", "m1", 0)]
    for i, (team, model, explored) in enumerate(plan):
        ctx = encode_context(rng.normal(size=CONTEXT_DIM))
        rows.append((f"r{i}", now - 3600 - i, team, model, 200, 1000 * (i + 1), ctx, 0.5, explored))
    rows.append(("old", now - 40 * DAY, "a", "m1", 200, 5, encode_context(rng.normal(size=CONTEXT_DIM)), 1.0, 0))
    rows.append(("named", now - 60, "a", "m2", 200, 7, None, None, 0))  # a named model: not routed
    db.executemany("INSERT INTO ledger (request_id, ts, team_id, served_model, status, cost_nanos, route_context,"
                   " route_propensity, route_explored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    scores = {"r0": 1.0, "r1": 0.0, "r2": 1.0, "r6": 0.0, "r10": 1.0, "old": 1.0, "named": 0.0}
    for rid, score in scores.items():
        feedback.append((rid, now, None, score))
    db.executemany("INSERT INTO feedback (request_id, ts, key_id, score) VALUES (?, ?, ?, ?)", feedback)
    db.close()
    return scores


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'spend.db'}"
    return request.getfixturevalue("pg_url")


def _json(capsys, *args: str) -> dict:
    assert main(["router", "status", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_learn_then_status(url, capsys):
    _fill(url)
    assert main(["router", "learn", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "added 6 label(s), updated 0 from feedback"  # not "named"
    assert main(["router", "learn", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "added 0 label(s), updated 0 from feedback"

    a = _json(capsys, "--database-url", url, "--team", "a")
    m = {x["model"]: x for x in a["models"]}
    assert a["routed"] == 10 and a["explored"] == 3  # the 40-day-old row is outside the window
    assert m["m1"]["routed"] == 6 and m["m1"]["explored"] == 2 and m["m2"]["routed"] == 4
    assert m["m1"]["exploration_cost_nanos"] == 5000 + 6000 and m["m2"]["exploration_cost_nanos"] == 10_000
    assert a["exploration_cost_nanos"] == 21_000 and a["routed_cost_nanos"] == sum(1000 * i for i in range(1, 11))
    # Labels: every one, whatever the window (the old row's too). m1: r0 1, r1 0, r2 1, old 1; m2: r6 0.
    assert m["m1"]["labels"] == {"feedback": 4, "judge": 0} and m["m1"]["quality"] == pytest.approx(4 / 6)
    assert m["m2"]["labels"]["feedback"] == 1 and m["m2"]["quality"] == pytest.approx(1 / 3)
    assert a["clusters"] == []  # too few labels to cluster
    b = _json(capsys, "--database-url", url, "--team", "b")
    assert b["routed"] == 1 and b["models"][0]["labels"]["feedback"] == 1 and b["models"][0]["quality"] == 2 / 3
    wide = _json(capsys, "--database-url", url, "--days", "60")
    assert wide["routed"] == 12


def test_simulate_policy_model_reads_the_ledger(url, capsys):
    _fill(url)
    assert main(["simulate", "--database-url", url, "--policy-model", "m1", "--format", "json"]) == 0
    o = json.loads(capsys.readouterr().out)["off_policy"][0]
    # Rated routed rows in the last 30 days: r0 r1 r2 (m1), r6 (m2), r10 (m1, team b), each at propensity 0.5.
    assert o["rated"] == 5 and o["matched"] == 4
    assert o["ips"] == pytest.approx((1 + 0 + 1 + 1) / 0.5 / 5) and o["snips"] == pytest.approx(3 / 4)
    assert o["confidence"].startswith("low")
