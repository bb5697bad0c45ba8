"""``simulate`` re-runs routing offline; on replay data it must agree with the live gateway.

The live run (conftest): real demo prompts through a real gateway under "auto" and
"auto-cheap", the ledger written by real spend control. The simulation scores the same
prompts with the same router, applies the gateway's candidate and expected-cost rules,
and prices the choices with spend control's pricing function.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from reports.conftest import N_AUTO, N_CHEAP, demo_prompts
from thrifty.cli import main
from thrifty.reports import simulate as sim


@pytest.fixture(scope="module")
def setup():
    from thrifty.config import build_config, default_document
    from thrifty.providers.replay_records import read_packaged
    from thrifty.router import Router, default_router_path

    doc = default_document(env={})
    config = build_config(doc, env={})
    router = Router.load(default_router_path())
    pool = sim.Pool(config.models, router.models, expected_output_tokens=config.expected_output_tokens)
    records = list(read_packaged())
    return config, router, pool, records


def _ledger_costs(live, request_ids: list[str]) -> dict[str, int]:
    db = live.db()
    try:
        marks = ",".join("?" * len(request_ids))
        return {r[0]: int(r[1]) for r in db.all(
            f"SELECT request_id, cost_nanos FROM ledger WHERE request_id IN ({marks})", request_ids)}
    finally:
        db.close()


@pytest.mark.parametrize("profile,start,count", [("auto", 0, N_AUTO), ("auto-cheap", N_AUTO, N_CHEAP)])
def test_simulation_on_replay_data_matches_the_live_gateway_to_the_cent(live, setup, profile, start, count):
    config, router, pool, records = setup
    prompts = demo_prompts()[start:start + count]
    wanted = {p.strip() for p in prompts}
    items = sim.items_from_replay(router, [r for r in records if r.prompt.strip() in wanted],
                                  config.expected_output_tokens)
    assert len(items) == count
    [outcome] = sim.run(router, pool, items, [sim.Scenario(profile, router.profiles[profile])])

    sent = {s.prompt.strip(): s for s in live.sent if s.profile == profile}
    order = list(dict.fromkeys(r.prompt.strip() for r in records if r.prompt.strip() in wanted))
    live_models = [sent[p].served for p in order]
    assert outcome.choices == live_models  # the same model for every prompt
    assert len(set(live_models)) > 1  # routing really mixed models, so agreement is not trivial

    ledger = _ledger_costs(live, [sent[p].request_id for p in order])
    live_total = sum(ledger.values())
    # Per request within a nano-dollar (float vs Decimal pricing), in total to the cent.
    for p, simulated in zip(order, outcome.costs, strict=True):
        assert abs(ledger[sent[p].request_id] - simulated) <= 1
    assert round(Decimal(outcome.cost_nanos) / 10**9, 2) == round(Decimal(live_total) / 10**9, 2)
    assert abs(outcome.cost_nanos - live_total) <= len(order)
    assert outcome.exact_cost_share == 1.0 and outcome.labelled == count


def test_profiles_trade_cost_for_quality_with_confidence_intervals(setup):
    config, router, pool, records = setup
    items = sim.items_from_replay(router, records, config.expected_output_tokens)
    outcomes = {o.scenario: o for o in sim.run(router, pool, items, [
        sim.Scenario("cheap", router.profiles["auto-cheap"]), sim.Scenario("auto", router.profiles["auto"]),
        sim.Scenario("best", router.profiles["auto-best"]), sim.Scenario("frontier", fixed=config.frontier_model)])}
    assert outcomes["cheap"].cost_nanos < outcomes["auto"].cost_nanos < outcomes["frontier"].cost_nanos
    # The frontier scenario is the recorded answers of the frontier model: its accuracy is the data's.
    frontier_correct = [r.correct for r in records if r.model == config.frontier_model]
    assert outcomes["frontier"].quality == pytest.approx(sum(frontier_correct) / len(frontier_correct))
    for o in outcomes.values():
        lo, hi = o.quality_ci
        assert lo <= o.quality <= hi and hi - lo > 0
        assert o.cost_ci[0] <= o.cost_nanos <= o.cost_ci[1]


def test_price_list_and_policy_change_the_choice(setup):
    config, router, _pool, records = setup
    items = sim.items_from_replay(router, records, config.expected_output_tokens, limit=60)
    auto = [sim.Scenario("a", router.profiles["auto"])]
    base = sim.run(router, sim.Pool(config.models, router.models), items, auto)[0]
    top = max(base.shares, key=base.shares.get)
    denied = sim.run(router, sim.Pool(config.models, router.models, policy={"deny_models": [top]}), items,
                     [sim.Scenario("a", router.profiles["auto"])])[0]
    assert top not in denied.shares
    # Make the cheapest-chosen model 1000x dearer: the router stops picking it as often.
    cheap = sim.Pool(config.models, router.models, prices={top: {"input_cost_per_token": 1e-3,
                                                                 "output_cost_per_token": 1e-3}})
    repriced = sim.run(router, cheap, items, [sim.Scenario("a", router.profiles["auto"])])[0]
    assert repriced.shares.get(top, 0) < base.shares[top]


def test_simulate_cli_on_the_ledger_uses_stored_scores_and_feedback(live, capsys):
    import httpx

    # Rate a few answers through the real endpoint; simulate uses them as labels.
    rated = [s for s in live.sent if s.key_name == "ada-key"][:5]
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for i, s in enumerate(rated):
            r = c.post("/v1/feedback", json={"request_id": s.request_id, "thumbs": "up" if i % 2 else "down"},
                       headers={"authorization": f"Bearer {live.keys['ada-key']}"})
            assert r.status_code == 200, r.text
    live.spend.flush()
    assert main(["simulate", "--database-url", live.db_url, "--team", "research", "--profile", "auto",
                 "--cost-weight", "0", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by = {s["scenario"]: s for s in doc["scenarios"]}
    assert doc["requests"] == N_AUTO
    served = by["as served"]
    db = live.db()
    try:
        ledger_total = db.one("SELECT SUM(cost_nanos) FROM ledger WHERE team_id = 'research'")[0]
    finally:
        db.close()
    assert served["cost_nanos"] == ledger_total
    assert served["labelled"] == 5 and served["quality"] == pytest.approx(2 / 5)
    # Re-running the profile the traffic was served with reproduces what was served.
    auto = next(v for k, v in by.items() if k.startswith("auto"))
    assert auto["shares"] == served["shares"] and auto["cost_nanos"] == served["cost_nanos"]
    assert by["cost_weight=0"]["cost_nanos"] > served["cost_nanos"]  # quality only: dearer


def test_simulate_cli_prompts_jsonl_and_chart(tmp_path, capsys):
    prompts = demo_prompts()[:12]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    chart = tmp_path / "whatif.png"
    assert main(["simulate", "--prompts", str(path), "--profile", "auto-cheap", "--profile", "auto-best",
                 "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "auto-cheap" in out and "auto-best" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["--prompts", "/nonexistent.jsonl"], "cannot read"),
    (["--replay", "packaged", "--profile", "nope"], "unknown routing profile"),
    (["--replay", "packaged", "--prices", "{\"no-such-model\": {\"input_cost_per_token\": 1}}"], "does not serve"),
    (["--replay", "packaged", "--policy", "{\"bogus\": 1}"], "policy"),
    (["--replay", "packaged", "--limit", "0"], "--limit"),
    (["--replay", "packaged", "--cost-weight", "-1"], "cost weight"),
])
def test_simulate_cli_bad_input_is_one_clear_line(args, message, capsys):
    assert main(["simulate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_jsonl_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "hi"}\n{"nope": 1}\n')
    assert main(["simulate", "--prompts", str(path)]) == 2
    assert f"{path}:2" in capsys.readouterr().err
