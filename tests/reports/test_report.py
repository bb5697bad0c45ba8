"""``thrifty report`` on a real gateway's ledger, and the rollup on multi-day ledgers.

Every figure is checked against a plain SQL sum over the ledger table.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid

import pytest

from thrifty.cli import main
from thrifty.reports.filters import Filters
from thrifty.reports.query import build_report
from thrifty.spend.db import Database


def _sql(db: Database, where: str = "1=1", params: tuple = ()) -> tuple[int, int, int, int, int]:
    row = db.one("SELECT COUNT(*), COALESCE(SUM(cost_nanos), 0), COALESCE(SUM(frontier_cost_nanos), 0),"
                 f" COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM ledger WHERE {where}",
                 params)
    return tuple(int(v) for v in row)  # type: ignore[return-value]


def test_report_json_equals_the_ledger(live, capsys):
    assert main(["report", "--database-url", live.db_url, "--by", "team", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    db = live.db()
    try:
        n, cost, frontier, pt, ct = _sql(db)
        t = doc["totals"]
        assert (t["requests"], t["cost_nanos"], t["frontier_cost_nanos"], t["prompt_tokens"],
                t["completion_tokens"]) == (n, cost, frontier, pt, ct)
        assert n == len(live.sent)
        assert t["savings_nanos"] == frontier - cost
        assert t["savings_pct"] == pytest.approx(100 * (frontier - cost) / frontier)
        assert t["usd_per_mtok"] == pytest.approx(cost / 1e3 / (pt + ct))
        for g in doc["groups"]:
            assert (g["requests"], g["cost_nanos"]) == _sql(db, "team_id = ?", (g["name"],))[:2]
        assert {g["name"] for g in doc["groups"]} == {"research", "support"}
        models = {m["name"]: m for m in doc["models"]}
        for name, m in models.items():
            assert m["requests"] == _sql(db, "served_model = ?", (name,))[0]
            assert m["share"] == pytest.approx(m["requests"] / n)
        assert doc["leaderboard"]["by"] == "user"
        assert [r["name"] for r in doc["leaderboard"]["rows"]] == [
            r[0] for r in db.all("SELECT user_id FROM ledger GROUP BY user_id ORDER BY SUM(cost_nanos) DESC")]
        # The budget the fixture set: spent equals the team's spend, the projection is a date.
        [b] = doc["budgets"]
        assert (b["scope_id"], b["spent_nanos"]) == ("research", _sql(db, "team_id = 'research'")[1])
        assert b["runs_out"] is not None and b["status"] == "runs out"  # an open window never resets
    finally:
        db.close()


def test_report_by_tag_model_and_filters(live, capsys):
    assert main(["report", "--database-url", live.db_url, "--by", "tag", "--format", "json"]) == 0
    tags = {g["name"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert set(tags) == {"app-ada", "app-bob"}
    assert main(["report", "--database-url", live.db_url, "--user", "bob", "--by", "model", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    db = live.db()
    try:
        assert rows[-1]["model"] == "TOTAL"
        assert int(rows[-1]["requests"]) == _sql(db, "user_id = 'bob'")[0] == tags["app-bob"]["requests"]
        for r in rows[:-1]:
            assert int(r["requests"]) == _sql(db, "user_id = 'bob' AND served_model = ?", (r["model"],))[0]
    finally:
        db.close()


def test_report_table_and_charts(live, tmp_path, capsys):
    assert main(["report", "--database-url", live.db_url, "--charts", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for heading in ("Spend by team", "Traffic per model", "Leaderboard", "Price paid over time", "Budgets"):
        assert heading in out
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert {"spend_by_model.png", "price_per_mtok.png", "savings.png", "savings_by_model.png"} <= set(pngs)
    assert any(p.startswith("burndown_team_research") for p in pngs)
    for p in tmp_path.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


@pytest.mark.parametrize("args,message", [
    (["--month", "2026-13"], "not a month"),
    (["--since", "yesterday"], "not a time"),
    (["--since", "2026-11-10", "--until", "2026-11-01"], "empty"),
    (["--days", "0"], "--days"),
    (["--month", "2026-11", "--days", "3"], "--month"),
])
def test_report_bad_input_is_one_clear_line(live, args, message, capsys):
    assert main(["report", "--database-url", live.db_url, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_report_without_a_ledger(tmp_path, capsys):
    assert main(["report", "--data-dir", str(tmp_path)]) == 2
    assert "no spend database" in capsys.readouterr().err


# --- rollup: the same answer as the raw ledger, on SQLite and PostgreSQL ---------------------------------


def _ledger(url: str) -> Database:
    from thrifty.spend.schema import migrate

    db = Database(url)
    migrate(db)
    return db


def _insert(db: Database, rows: list[tuple]) -> None:
    from thrifty.spend.ledger import COLUMNS

    db.executemany(f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def _row(ts: float, team: str, model: str, cost: int, tags: str = "[]", status: int = 200) -> tuple:
    return (uuid.uuid4().hex, ts, f"key-{team}", f"user-{team}", team, tags, "chat", "auto", model, "replay", "r",
            100, 50, 10, 0, 1e-6, 2e-6, 0.0, cost, cost * 4, 12.5, status, None, 0, 0, int(cost % 7 == 0), 0, None,
            None, None, 0)  # route_context, route_propensity, route_explored


def _multi_day_rows(now: float, n: int = 600) -> list[tuple]:
    rows = []
    for i in range(n):
        ts = now - 9 * 86_400 + i * (9 * 86_400 / n)  # nine days up to now, today included
        rows.append(_row(ts, ("a", "b", "c")[i % 3], ("m1", "m2")[i % 2], 1000 + i,
                         '["x"]' if i % 4 else '["x", "y"]', 200 if i % 13 else 500))
    return rows


def _same(db: Database, f: Filters, by: str, now: float) -> None:
    fast = build_report(db, f, by, now=now, with_budgets=False)
    raw = build_report(db, f, by, use_rollup=False, now=now, with_budgets=False)
    assert fast.totals == raw.totals
    assert [(g.name, g.totals) for g in fast.groups] == [(g.name, g.totals) for g in raw.groups]
    assert fast.series.keys() == raw.series.keys()
    assert fast.series == raw.series


def _rollup_checks(db: Database) -> None:
    now = time.time()
    _insert(db, _multi_day_rows(now))
    # Ranges with partial days at both edges, whole days, and filters.
    for f, by in ((Filters(now - 7.3 * 86_400, now + 1), "team"), (Filters(now - 30 * 86_400, now + 1), "tag"),
                  (Filters(now - 5.5 * 86_400, now - 1.2 * 86_400, team="b"), "model"),
                  (Filters(now - 2 * 86_400, now + 1, model="m1"), "user")):
        _same(db, f, by, now)
    assert int(db.one("SELECT COUNT(*) FROM report_daily")[0]) > 0
    f = Filters(now - 30 * 86_400, now + 1)
    before = build_report(db, f, "team", now=now, with_budgets=False).totals
    assert before.requests == 600
    # A late record in a closed day (a journal replayed after a crash) is counted on the next report.
    _insert(db, [_row(now - 6 * 86_400, "a", "m1", 777)])
    after = build_report(db, f, "team", now=now, with_budgets=False).totals
    assert after.requests == before.requests + 1 and after.cost_nanos == before.cost_nanos + 777
    _same(db, f, "team", now)


def test_rollup_matches_the_raw_ledger_sqlite(tmp_path):
    db = _ledger(f"sqlite:///{tmp_path / 'spend.db'}")
    try:
        _rollup_checks(db)
    finally:
        db.close()


def test_rollup_matches_the_raw_ledger_postgres(pg_url):
    db = _ledger(pg_url)
    try:
        _rollup_checks(db)
    finally:
        db.close()


def test_burndown_projects_from_the_trailing_rate(tmp_path):
    from thrifty.reports.burndown import burndown
    from thrifty.spend import admin_ops

    db = _ledger(f"sqlite:///{tmp_path / 'spend.db'}")
    try:
        now = time.time()
        admin_ops.create_team(db, "a")
        admin_ops.create_team(db, "b")
        # $0.30 spent by team a over the last two days (and some by team b, which must not count).
        _insert(db, [_row(now - 2 * 86_400 + i * 3600, "a", "m1", 6_250_000) for i in range(48)])
        _insert(db, [_row(now - 3600, "b", "m1", 9_000_000)])
        admin_ops.set_budget(db, "team", "a", amount_usd=1, period="window", window_start=now - 3 * 86_400)
        admin_ops.set_budget(db, "team", "b", amount_usd="0.005", period="window", window_start=now - 86_400)
        by = {b["scope_id"]: b for b in burndown(db, now=now)}
        a = by["a"]
        assert a["spent_nanos"] == 300_000_000 and a["remaining_nanos"] == 700_000_000
        # Three days into the window: $0.30 / 3 days = $0.10 a day, so $0.70 lasts 7 more days.
        assert a["usd_per_day"] == pytest.approx(0.10, rel=1e-4)
        assert a["runs_out_at"] == pytest.approx(now + 7 * 86_400, abs=120)
        assert a["status"] == "runs out"  # an open-ended window never resets
        assert by["b"]["status"] == "exhausted" and by["b"]["used_pct"] > 100
        assert [b["scope_id"] for b in burndown(db, now=now, team="b")] == ["b"]
    finally:
        db.close()


def test_feedback_and_ledger_simulation_on_postgres(pg_url):
    from thrifty.reports import feedback
    from thrifty.reports import simulate as sim
    from thrifty.reports.tables import ensure_tables

    db = _ledger(pg_url)
    try:
        ensure_tables(db)
        ensure_tables(db)  # idempotent
        now = time.time()
        rows = [_row(now - 60 * i, "a", "m1", 1000 + i) for i in range(4)]
        rows = [r[:-4] + (json.dumps({"m1": 0.9, "m2": 0.4}),) + r[-3:] for r in rows]  # scores
        _insert(db, rows)
        rid = rows[0][0]
        out = feedback.record(db, rid, 0.0, "no", key_id="key-a", is_admin=False)
        assert out["model"] == "m1"
        feedback.record(db, rid, 1.0, None, key_id="key-a", is_admin=False)  # replaces
        with pytest.raises(feedback.FeedbackError):
            feedback.record(db, rid, 1.0, None, key_id="key-other", is_admin=False)
        items = sim.items_from_ledger(db, Filters(now - 86_400, now + 1))
        assert len(items) == 4 and sum(1 for i in items if i.labels) == 1
        assert [i.labels for i in items if i.labels] == [{"m1": 1.0}]
        assert sum(i.served_cost_nanos for i in items) == sum(r[18] for r in rows)
    finally:
        db.close()
