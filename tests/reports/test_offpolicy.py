"""Inverse-propensity estimates of "always model X" recover the true quality on synthetic logs
with known propensities, alone and through ``thrifty simulate --policy-model``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thrifty.cli import main
from thrifty.reports.offpolicy import estimate

MODELS = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "meta/llama-2-70b-chat")
QUALITY = np.array([0.9, 0.6, 0.4])  # each model's true P(good answer)


def _log(n: int, seed: int) -> tuple[list[str], list[float], list[float]]:
    """A logging policy that varies per request (Dirichlet propensities), like Thompson sampling."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 2.0], size=n)
    chosen = np.array([rng.choice(3, p=p) for p in probs])
    scores = (rng.random(n) < QUALITY[chosen]).astype(float)
    return [MODELS[c] for c in chosen], scores.tolist(), probs[np.arange(n), chosen].tolist()


def test_ips_and_snips_recover_the_true_value():
    served, scores, props = _log(3000, seed=1)
    for i, model in enumerate(MODELS):
        e = estimate(model, served, scores, props)
        # Within 3 standard errors (a 90% interval misses one time in ten: the next test counts).
        assert abs(e.ips - QUALITY[i]) <= 3 * e.ips_se and abs(e.snips - QUALITY[i]) <= 3 * e.snips_se, e
        assert e.ips_interval[1] - e.ips_interval[0] == pytest.approx(2 * 1.645 * e.ips_se, rel=1e-3)
        assert e.snips_se < 0.03
        assert e.matched == served.count(model) and 100 < e.ess < e.matched
        assert e.confidence.startswith(("high", "medium"))


def test_the_90_percent_intervals_cover_about_90_percent_of_the_time():
    hits = {"ips": 0, "snips": 0}
    runs = 200
    for seed in range(runs):
        e = estimate(MODELS[1], *_log(400, seed))
        hits["ips"] += e.ips_interval[0] <= QUALITY[1] <= e.ips_interval[1]
        hits["snips"] += e.snips_interval[0] <= QUALITY[1] <= e.snips_interval[1]
    assert 0.83 <= hits["ips"] / runs <= 0.96 and 0.83 <= hits["snips"] / runs <= 0.96, hits


def test_no_chance_and_no_data_are_said():
    e = estimate("x", ["a", "a", "x"], [1.0, 0.0, 1.0], [1.0, 1.0, 0.5])
    assert e.no_chance == 2 and "no chance on 2 of 3" in e.confidence and e.confidence.startswith("low")
    assert e.ips == pytest.approx(2 / 3) and e.snips == 1.0
    none = estimate("y", ["a"], [1.0], [0.5])
    assert none.ips is None and none.confidence.startswith("no estimate")


def _ledger(tmp_path, served, scores, props) -> str:
    from thrifty.reports.tables import ensure_tables
    from thrifty.spend.db import Database
    from thrifty.spend.schema import migrate

    url = f"sqlite:///{tmp_path / 'spend.db'}"
    db = Database(url)
    migrate(db)
    ensure_tables(db)
    import time

    now = time.time() - 3600
    db.executemany("INSERT INTO ledger (request_id, ts, requested_model, served_model, status, route_propensity)"
                   " VALUES (?, ?, 'auto', ?, 200, ?)",
                   [(f"r{i}", now + i * 0.001, m, p) for i, (m, p) in enumerate(zip(served, props, strict=True))])
    db.executemany("INSERT INTO feedback (request_id, ts, key_id, score) VALUES (?, ?, NULL, ?)",
                   [(f"r{i}", now, s) for i, s in enumerate(scores)])
    # Unrated and unrouted requests do not count.
    db.execute("INSERT INTO ledger (request_id, ts, served_model, status, route_propensity)"
               " VALUES ('unrated', ?, ?, 200, 0.5)", (now, MODELS[0]))
    db.execute("INSERT INTO ledger (request_id, ts, served_model, status) VALUES ('named', ?, ?, 200)",
               (now, MODELS[0]))
    db.execute("INSERT INTO feedback (request_id, ts, score) VALUES ('named', ?, 0)", (now,))
    db.close()
    return url


def test_simulate_policy_model_on_the_ledger(tmp_path, capsys):
    served, scores, props = _log(2000, seed=7)
    url = _ledger(tmp_path, served, scores, props)
    assert main(["simulate", "--database-url", url, "--policy-model", MODELS[0], "--policy-model", MODELS[2],
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {o["model"]: o for o in doc["off_policy"]}
    for i in (0, 2):
        o = got[MODELS[i]]
        assert o == estimate(MODELS[i], served, scores, props).as_dict() | {
            "ips_interval": list(o["ips_interval"]), "snips_interval": list(o["snips_interval"])}
        assert o["rated"] == 2000 and o["ips_interval"][0] <= QUALITY[i] <= o["ips_interval"][1]
    assert main(["simulate", "--database-url", url, "--policy-model", MODELS[1]]) == 0
    out = capsys.readouterr().out
    assert "Off-policy estimate" in out and f"always {MODELS[1]}: confidence" in out


@pytest.mark.parametrize("args,message", [
    (["--policy-model", "no-such-model"], "neither a configured model nor in the ledger"),
    (["--policy-model", MODELS[0], "--format", "csv"], "use --format table or json"),
    (["--policy-model", MODELS[0], "--replay", "packaged"], "drop --replay/--prompts"),
])
def test_simulate_policy_model_bad_input_is_one_line(tmp_path, capsys, args, message):
    url = _ledger(tmp_path, *_log(50, seed=3))
    assert main(["simulate", "--database-url", url, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
