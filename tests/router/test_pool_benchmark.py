"""``python -m benchmarks pool`` end to end on a tiny slice, so the harness cannot rot.

Real parts: ``thrifty serve`` as a subprocess, the replay upstream as a real HTTP server, the
official openai client, the admin API and ``POST /v1/feedback``. The assertions are on the
report's structure and its bookkeeping, never on quality figures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import pool as bench

POLICIES = ("best_single", "cheapest_within_2pct", "oracle", "naive_thompson")


@pytest.fixture(scope="module")
def full() -> bench.Pool:
    if not (bench.DEFAULT_DATA / "routerbench").is_dir():
        pytest.skip("../shared/data/routerbench is not here")
    return bench.load_pool()


def run(tmp_path, *args: str) -> dict:
    out = tmp_path / "pool.json"
    argv = ["--pools", "all", "--limit", "30", "--models", "3", "--seeds", "1", "--rated", "1.0",
            "--out", str(out), *args]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def check_structure(doc: dict) -> dict:
    assert len(doc["runs"]) == 1
    r = doc["runs"][0]
    assert r["prompts"] == 30 and r["models"] == 3 and r["rated"] == 30
    for name in POLICIES:
        fig = r["policies"][name]
        for seg in ("whole", "second_half"):
            assert set(fig[seg]) == {"quality", "cost_per_1k", "quality_vs_best", "cost_vs_best"}
        assert isinstance(fig["targets"]["met"], bool) and fig["targets"]["target"]
    pol = r["policies"]
    assert pol["best_single"]["whole"]["cost_vs_best"] == pytest.approx(1.0)
    assert pol["oracle"]["whole"]["quality"] >= pol["best_single"]["whole"]["quality"]
    assert {row["policy"] for row in doc["summary"]} >= {"thrifty_auto", *POLICIES}
    return r


def test_unseen_pool_refused_or_served_is_reported(tmp_path, capsys):
    """Anonymised names: today the gateway refuses ``auto`` (403); the report says so."""
    r = check_structure(run(tmp_path))
    assert set(r["names"]) == {"m01", "m02", "m03"}
    t = r["thrifty"]
    printed = capsys.readouterr().out
    if t["refused"]:
        assert t["first_refusal"]["status"] == 403 and t["first_refusal"]["message"]
        assert "thrifty_auto" not in r["policies"]
        assert "REFUSED (403" in printed and "| thrifty_auto | refused (403" in printed
    else:  # once auto serves unseen pools
        assert t["served"] == 30 and t["feedback_errors"] == 0
        assert t["upstream_calls"] >= 30
        assert "thrifty_auto" in r["policies"]


def test_policy_refusal_is_reported_not_a_crash(tmp_path, capsys):
    doc = run(tmp_path, "--policy", '{"deny_models": ["*"]}', "--give-up", "5")
    r = check_structure(doc)
    t = r["thrifty"]
    assert t["refused"] and t["stopped_early"] and t["refusals"] == 5 and t["served"] == 0
    assert t["first_refusal"]["status"] == 403
    assert t["upstream_calls"] == 0  # refused before any model call
    assert "REFUSED (403" in capsys.readouterr().out


def test_served_path_counts_every_call_and_rates_every_answer(tmp_path):
    """With the model names the packaged router knows (a control), ``auto`` serves: every answer
    is rated, the upstream's count matches, and what it charged is what the gateway billed."""
    r = check_structure(run(tmp_path, "--known-names"))
    t = r["thrifty"]
    assert not t["refused"] and t["served"] == 30 and t["refusals"] == 0
    assert t["feedback_errors"] == 0
    assert t["upstream_calls"] == 30 and t["upstream_calls_unmatched"] == 0
    assert t["billed_usd"] == pytest.approx(t["upstream_cost_usd"], rel=1e-4)
    assert sum(t["share_by_model"].values()) == pytest.approx(1.0)
    auto = r["policies"]["thrifty_auto"]
    assert 0 <= auto["whole"]["quality"] <= 1 and auto["whole"]["cost_vs_best"] > 0


def test_prices_and_usage_are_consistent_with_the_recorded_costs(full):
    prices = bench.fit_prices(full)
    assert set(prices) == set(full.models)
    for j, model in enumerate(full.models):
        a, b = prices[model]
        assert a > 0 and b > 0
        for i in range(0, len(full), 97):
            pt, ct = bench.usage_of(full.prompts[i], full.costs[i, j], (a, b))
            assert pt >= 1 and ct >= 1
            assert pt * a + ct * b == pytest.approx(full.costs[i, j], abs=b / 2 + 1e-12)


def test_thompson_learns_only_from_rated_answers():
    n = 400
    scores = np.zeros((n, 3))
    scores[:, 1] = 1  # model 1 is always right, the others never
    pool = bench.Pool("synthetic", ["a", "b", "c"], ["p"] * n, ["t"] * n, scores, np.ones((n, 3)),
                      [["x"] * 3] * n)
    order = np.arange(n)
    learned = bench.thompson(pool, order, np.ones(n, bool), seed=1)
    assert (learned[n // 2:] == 1).mean() > 0.9
    blind = bench.thompson(pool, order, np.zeros(n, bool), seed=1)  # no ratings: nothing learned
    assert (blind[n // 2:] == 1).mean() < 0.6
