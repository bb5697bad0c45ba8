"""``thrifty router status`` on a ledger filled through the real gateway, checked against what was sent."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from rated_gateway import JUDGE_WEIGHT, TEAM

from thrifty.cli import main
from thrifty.reports.offpolicy import estimate


def _status(rated, capsys, *args: str) -> dict:
    rated.spend.flush()
    assert main(["router", "status", "--database-url", rated.db_url, "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_json_equals_what_was_sent_and_rated(rated, capsys):
    doc = _status(rated, capsys)
    by_model = {m["model"]: m for m in doc["models"]}
    served = Counter(s.model for s in rated.sent)
    explored = Counter(s.model for s in rated.sent if s.kind == "explored")
    assert doc["routed"] == len(rated.sent) and doc["explored"] == sum(explored.values())
    assert explored, "warm-up explores: the fixture must exercise exploration"
    model_of = {s.request_id: s.model for s in rated.sent}
    fb = Counter(model_of[r] for r in rated.feedback)
    judge = Counter(model_of[r] for r in rated.judge)
    for name, m in by_model.items():
        assert m["routed"] == served[name]
        assert m["routed_share"] == pytest.approx(served[name] / len(rated.sent))
        assert m["explored"] == explored[name]
        cost = sum(s.cost for s in rated.sent if s.model == name and s.kind == "explored")
        assert m["exploration_cost_nanos"] == pytest.approx(cost * 1e9, abs=len(rated.sent))
        assert m["labels"] == {"feedback": fb[name], "judge": judge[name]}
        # The Beta posterior of its labels on a uniform prior; the interval holds the mean.
        s = sum(rated.feedback[r] for r in rated.feedback if model_of[r] == name) + JUDGE_WEIGHT * sum(
            rated.judge[r] for r in rated.judge if model_of[r] == name)
        n = fb[name] + JUDGE_WEIGHT * judge[name]
        if n:
            assert m["quality"] == pytest.approx((1 + s) / (2 + n))
            lo, hi = m["interval"]
            assert 0 <= lo < m["quality"] < hi <= 1
            sd = (m["quality"] * (1 - m["quality"]) / (3 + n)) ** 0.5
            assert hi - lo == pytest.approx(2 * 1.645 * sd, rel=0.25)  # close to the normal approximation
        else:
            assert m["quality"] is None and m["interval"] is None
    assert set(by_model) == set(served) | set(fb)
    total_x = sum(s.cost for s in rated.sent if s.kind == "explored")
    assert doc["exploration_cost_nanos"] == pytest.approx(total_x * 1e9, abs=len(rated.sent))
    assert doc["routed_cost_nanos"] == pytest.approx(sum(s.cost for s in rated.sent) * 1e9, abs=len(rated.sent))


def test_clusters_partition_the_labels_deterministically(rated, capsys):
    doc = _status(rated, capsys)
    clusters = doc["clusters"]
    n_labels = len(rated.feedback) + len(rated.judge)
    assert 2 <= len(clusters) <= 5
    assert sum(c["labels"] for c in clusters) == n_labels
    assert sum(m["labels"] for c in clusters for m in c["models"].values()) == n_labels
    assert all(0 <= m["mean"] <= 1 for c in clusters for m in c["models"].values())
    assert [c["labels"] for c in clusters] == sorted((c["labels"] for c in clusters), reverse=True)
    assert _status(rated, capsys)["clusters"] == clusters  # seeded: the same every time


def test_team_filter_and_window(rated, capsys):
    assert _status(rated, capsys, "--team", TEAM)["routed"] == len(rated.sent)
    other = _status(rated, capsys, "--team", "nobody")
    assert other["routed"] == 0 and other["models"] == [] and other["clusters"] == []


def test_table_output_uses_the_money_rule(rated, capsys):
    from thrifty.reports.format import money_nanos

    doc = _status(rated, capsys)
    assert main(["router", "status", "--database-url", rated.db_url]) == 0
    out = capsys.readouterr().out
    assert "Clusters of prompt contexts" in out and "90% interval" in out
    for cell in money_nanos([m["exploration_cost_nanos"] for m in doc["models"]]):
        assert cell in out


@pytest.mark.parametrize("args,message", [
    (["--days", "0"], "--days must be a positive number"),
    (["--days", "soon"], "--days must be a positive number"),
    (["--format", "xml"], "--format must be table or json"),
])
def test_bad_flags_are_one_clear_line(rated, capsys, args, message):
    assert main(["router", "status", "--database-url", rated.db_url, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_database_before_the_learning_migration_is_one_clear_line(tmp_path, capsys):
    from thrifty.spend.db import Database

    path = tmp_path / "old.db"
    db = Database(f"sqlite:///{path}")
    db.execute("CREATE TABLE ledger (request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION)")
    db.close()
    for cmd in ("status", "learn"):
        assert main(["router", cmd, "--database-url", f"sqlite:///{path}"]) == 2
        err = capsys.readouterr().err
        assert "no learned-routing tables" in err and err.count("\n") == 1


def test_unknown_flag_value_type_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["router", "status", "--team"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected one argument" in err


def test_simulate_keeps_its_scenarios_and_adds_the_off_policy_estimate(rated, capsys):
    rated.spend.flush()
    model_of = {s.request_id: s.model for s in rated.sent}
    top = Counter(model_of[r] for r in rated.feedback).most_common(1)[0][0]
    assert main(["simulate", "--database-url", rated.db_url, "--policy-model", top, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["requests"] == len(rated.sent) and doc["scenarios"][0]["scenario"] == "as served"
    (o,) = doc["off_policy"]
    assert o["model"] == top and o["rated"] == len(rated.feedback)
    assert o["matched"] == sum(1 for r in rated.feedback if model_of[r] == top)
    db = rated.db()
    try:
        prop = dict(db.all("SELECT request_id, route_propensity FROM ledger WHERE route_propensity IS NOT NULL"))
    finally:
        db.close()
    rids = list(rated.feedback)  # the rated routed requests: served as the responses said, scored as sent
    want = estimate(top, [model_of[r] for r in rids], [rated.feedback[r] for r in rids], [prop[r] for r in rids])
    assert o["ips"] == pytest.approx(want.ips) and o["snips"] == pytest.approx(want.snips)
    assert o["ess"] == pytest.approx(want.ess) and o["confidence"] == want.confidence
    assert main(["simulate", "--database-url", rated.db_url, "--policy-model", top]) == 0
    out = capsys.readouterr().out
    assert "What-if routing" in out and "Off-policy estimate" in out
