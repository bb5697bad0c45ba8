"""What operators alert on, in ``/metrics`` after a few real requests: refusals by reason,
budgets' limit, spend and what remains, cost per team, upstream latency and time to first token
per model, cache lookups and savings, request duration by endpoint and model; and the text is
valid exposition format (promtool, when installed)."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from prom_text import promtool_ok, samples, total, value

from thrifty.config import load_config
from thrifty.gateway.assemble import build_app
from thrifty.pipeline.metrics import Metrics, rejection_reason
from thrifty.spend import admin_ops
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.loadtest import PRICE, write_config
from thrifty.testing.server import running

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello there"}]
BUDGET = "0.001"


@pytest.fixture
def fake():
    with FakeUpstream("ok") as f:
        yield f


def _cost(r: httpx.Response) -> Decimal:
    return Decimal(r.headers["x-thrifty-cost-usd"])


def test_alerting_families_after_requests(tmp_path, fake):
    config = load_config(str(write_config(
        tmp_path / "gw.toml", data_dir=tmp_path / "data", upstreams={"ok": fake.base_url},
        models={"m-ok": {"provider": "ok", **PRICE, "route": False}}, spend={},
        sections={"cache": {"ttl": 3600}},
    )))
    app, spend = build_app(config)
    db = spend.db
    admin_ops.create_team(db, "eng")
    admin_ops.create_team(db, "ops")
    _, eng = admin_ops.create_key(db, team_id="eng")
    _, limited = admin_ops.create_key(db, team_id="ops", rpm=1)
    denied_rec, denied = admin_ops.create_key(db, team_id="ops")
    admin_ops.set_policy(db, "key", denied_rec["id"], {"deny_models": ["m-ok"]})
    budget = admin_ops.set_budget(db, "team", "eng", amount_usd=BUDGET, period="daily")
    spend.reload()

    def post(key: str, **body) -> httpx.Response:
        return client.post(CHAT, json={"model": "m-ok", "messages": MSG, "max_tokens": 20, **body},
                           headers={"authorization": f"Bearer {key}"})

    with running(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        cached: list[httpx.Response] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r.headers["x-thrifty-cache"] == "hit-exact" for r in cached):
            cached.append(post(eng, temperature=0))  # the first stores the answer in the background
            time.sleep(0.005)  # (stored answers are written together, within 10 ms)
        misses = [r for r in cached if r.headers["x-thrifty-cache"] == "miss"]
        assert cached[-1].headers["x-thrifty-cache"] == "hit-exact" and len(misses) == len(cached) - 1
        with client.stream("POST", CHAT, headers={"authorization": f"Bearer {eng}"},
                           json={"model": "m-ok", "messages": MSG, "max_tokens": 20, "stream": True,
                                 "temperature": 0.5}) as streamed:
            assert streamed.status_code == 200
            streamed.read()
        spent = [post(eng, temperature=0.5) for _ in range(40)]  # until the team budget refuses
        served = [r for r in spent if r.status_code == 200]
        over = [r for r in spent if r.status_code == 429]
        assert served and over and len(served) + len(over) == 40
        assert all(r.json()["error"]["type"] == "budget_exceeded" for r in over)
        assert [post(limited).status_code, post(limited).status_code] == [200, 429]
        assert post(denied).status_code == 403
        assert post("sk-not-a-key").status_code == 401
        spend.flush()
        text = client.get("/metrics").text

    got = samples(text)
    assert value(got, "thrifty_rejections_total", reason="budget") == len(over)
    assert value(got, "thrifty_rejections_total", reason="rate_limit") == 1
    assert value(got, "thrifty_rejections_total", reason="policy") == 1
    assert value(got, "thrifty_rejections_total", reason="auth") == 1
    assert total(got, "thrifty_rejections_total") == len(over) + 3

    upstream_calls = len(misses) + len(served) + 1  # + the rate-limited key's first request
    answers = len(cached) + 1 + len(served) + 1
    assert value(got, "thrifty_upstream_latency_seconds_count", model="m-ok") == upstream_calls
    assert value(got, "thrifty_time_to_first_token_seconds_count", model="m-ok") == 1
    assert value(got, "thrifty_time_to_first_token_seconds_bucket", model="m-ok", le="+Inf") == 1
    duration = value(got, "thrifty_request_duration_seconds_count", endpoint="chat.completions", model="m-ok")
    assert duration == answers

    eng_cost = sum(_cost(r) for r in [*misses, *served]) + Decimal(
        "0.00003")  # the stream's answer: 12 prompt and 9 completion tokens
    assert value(got, "thrifty_team_cost_usd_total", team="eng") == pytest.approx(float(eng_cost))
    assert value(got, "thrifty_team_cost_usd_total", team="ops") == pytest.approx(0.00003)
    assert value(got, "thrifty_cache_lookups_total", result="miss") == len(misses)
    assert value(got, "thrifty_cache_lookups_total", result="exact") == 1
    assert value(got, "thrifty_cache_saved_usd_total") == pytest.approx(float(_cost(misses[0])))

    labels = {"budget": budget["id"], "scope": "team", "team": "eng", "period": "daily"}
    assert value(got, "thrifty_budget_limit_usd", **labels) == float(BUDGET)
    assert value(got, "thrifty_budget_spent_usd", **labels) == pytest.approx(float(eng_cost))
    assert value(got, "thrifty_budget_remaining_usd", **labels) == pytest.approx(float(BUDGET) - float(eng_cost))
    promtool_ok(text)


@pytest.mark.parametrize(
    ("status", "error_type", "reason"),
    [
        (429, "budget_exceeded", "budget"),
        (429, "rate_limit_error", "rate_limit"),
        (403, "policy_error", "policy"),
        (401, "authentication_error", "auth"),
        (413, "invalid_request_error", "body_too_large"),
        (400, "invalid_request_error", "invalid_request"),
        (503, "api_error", "spend_unavailable"),
        (502, "upstream_error", "upstream"),
        (499, "client_disconnected", None),
        (200, None, None),
    ],
)
def test_rejection_reasons_are_a_fixed_set(status, error_type, reason):
    assert rejection_reason(status, error_type) == reason


def test_finished_requests_feed_every_family_across_scrapes():
    """A finished request is one row update; the families it feeds are summed from the rows
    when read, and rows recorded between two reads add to what the first read showed."""
    m = Metrics()
    m.finished("chat.completions", "m1", 200, 0.02, "t1", 0.5, 2.0, 10, 3)
    m.finished("chat.completions", "m1", 200, 0.3, "t2", 0.25, 1.0, 5, 1)
    m.observe("chat.completions", "-", 429, 0.001)
    first = samples(m.render().decode())
    assert value(first, "thrifty_requests_total", endpoint="chat.completions", model="m1", status="200") == 2
    assert value(first, "thrifty_requests_total", endpoint="chat.completions", model="-", status="429") == 1
    assert value(first, "thrifty_cost_usd_total", model="m1") == 0.75
    assert value(first, "thrifty_team_cost_usd_total", team="t1") == 0.5
    assert value(first, "thrifty_frontier_cost_usd_total", model="m1") == 3.0
    assert value(first, "thrifty_tokens_total", model="m1", kind="prompt") == 15
    assert value(first, "thrifty_tokens_total", model="m1", kind="completion") == 4
    assert value(first, "thrifty_cost_usd_total", model="-") == 0  # refusals spend nothing
    hist = "thrifty_request_duration_seconds_bucket"
    assert value(first, hist, endpoint="chat.completions", model="m1", le="0.025") == 1
    assert value(first, hist, endpoint="chat.completions", model="m1", le="0.5") == 2
    assert value(first, "thrifty_request_duration_seconds_sum", endpoint="chat.completions", model="m1") == pytest.approx(0.32)

    m.finished("chat.completions", "m1", 200, 0.01, "t1", 0.5, 2.0, 1, 1)
    state = m.state()  # what another worker's scrape sums
    again = samples(Metrics().render([state]).decode())
    assert value(again, "thrifty_requests_total", endpoint="chat.completions", model="m1", status="200") == 3
    assert value(again, "thrifty_team_cost_usd_total", team="t1") == 1.0
    assert value(again, "thrifty_tokens_total", model="m1", kind="prompt") == 16
    assert value(again, "thrifty_request_duration_seconds_count", endpoint="chat.completions", model="m1") == 3
    assert samples(m.render().decode()) == again
