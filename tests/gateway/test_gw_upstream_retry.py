"""Retries as the upstream and the ledger see them, through a real server, real loopback
upstreams and the real ledger: a 429's or 503's Retry-After is waited for (or, when too long,
skipped to the fallback or passed on to the client), and an upstream that does the work and
then resets the connection is retried only as a counted retry, each lost attempt charged the
most it could cost and flagged ``cost_estimated``."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gw_setup import PRICE

from thrifty.config import build_config
from thrifty.testing.fake_upstream import USAGE, FakeUpstream
from thrifty.testing.server import running, served_app

MSG = [{"role": "user", "content": "Say hello."}]
# What one generation of the fake really costs at PRICE.
GENERATION_USD = USAGE["prompt_tokens"] * 1e-6 + USAGE["completion_tokens"] * 2e-6


def _fakes() -> dict[str, FakeUpstream]:
    return {
        "ok": FakeUpstream("ok"),
        "limited": FakeUpstream("rate_limited", fail_first=1, retry_after="1"),
        "limited_date": FakeUpstream("rate_limited", fail_first=1, limit_status=503),
        "limited_long": FakeUpstream("rate_limited", retry_after="120"),
        "limited_past_deadline": FakeUpstream("rate_limited", retry_after="5"),
        "reset": FakeUpstream("reset"),
        "reset_once": FakeUpstream("reset", fail_first=1),
        "reset_after_one": FakeUpstream("reset", ok_first=1),
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[tuple[str, str, Any, dict[str, FakeUpstream]]]:
    fakes = _fakes()
    for f in fakes.values():
        f.start()
    models: dict[str, Any] = {
        name: {"provider": name, **PRICE, "route": False} for name in fakes
    }
    models["limited_long_fb"] = {
        "provider": "limited_long", **PRICE, "route": False, "fallbacks": ["ok"]
    }
    doc = {
        "data_dir": str(tmp_path_factory.mktemp("retry")),
        "providers": {name: {"type": "openai", "base_url": f.base_url} for name, f in fakes.items()},
        "models": models,
        "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02, "max_retry_after": 30},
        "timeouts": {"connect": 1, "first_token": 2, "total": 3},
        "circuit_breaker": {"failures": 1000, "cooldown": 30},
    }
    app, spend, key = served_app(build_config(doc, env={}), "retry")
    spend.app = app  # the tests read the planner's bounds through it
    try:
        with running(app) as url:
            yield url, key, spend, fakes
    finally:
        for f in fakes.values():
            f.stop()


def _row(spend: Any, request_id: str) -> dict[str, Any]:
    spend.flush()
    row = spend.db.one(
        "SELECT status, error_type, cost_nanos, retries, route_reason FROM ledger"
        " WHERE request_id = ?",
        (request_id,),
    )
    assert row is not None, request_id
    return dict(zip(("status", "error_type", "cost_nanos", "retries", "reason"), row))


def _body(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "max_tokens": 50, "stream": stream}


def _post(url: str, key: str, model: str, *, stream: bool = False) -> httpx.Response:
    r = httpx.post(
        url + "/v1/chat/completions",
        json=_body(model, stream),
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    )
    r.read()
    return r


# -- Retry-After ---------------------------------------------------------------------------------


def test_retry_after_seconds_is_waited_for_before_retrying_the_same_deployment(gw):
    url, key, spend, fakes = gw
    started = time.monotonic()
    r = _post(url, key, "limited")
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.headers["x-thrifty-model"] == "limited"
    assert r.headers["x-thrifty-retries"] == "1" and fakes["limited"].hits == 2
    assert elapsed >= 0.95  # Retry-After: 1, not the 10-20 ms backoff
    assert _row(spend, r.headers["x-request-id"])["retries"] == 1


def test_retry_after_http_date_on_a_503_is_waited_for(gw):
    url, key, _spend, fakes = gw
    fake = fakes["limited_date"]
    # an HTTP-date two seconds ahead (whole seconds: the wait is between 1 and 2 s)
    fake.state.behaviour.retry_after = email.utils.formatdate(time.time() + 2, usegmt=True)
    started = time.monotonic()
    r = _post(url, key, "limited_date")
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.headers["x-thrifty-retries"] == "1" and fake.hits == 2
    assert elapsed >= 0.95


def test_a_retry_after_too_long_to_wait_moves_to_the_fallback_at_once(gw):
    url, key, _spend, fakes = gw
    before = fakes["limited_long"].hits
    started = time.monotonic()
    r = _post(url, key, "limited_long_fb")
    assert time.monotonic() - started < 1.0
    assert r.status_code == 200 and r.headers["x-thrifty-model"] == "ok"
    assert r.headers["x-thrifty-fallbacks"] == "1"
    assert fakes["limited_long"].hits - before == 1  # not retried: it asked for 120 s


@pytest.mark.parametrize(
    ("model", "wait"),
    [("limited_long", "120"), ("limited_past_deadline", "5")],
    ids=["over-max_retry_after", "over-the-time-left"],
)
def test_a_retry_after_too_long_to_wait_is_passed_on_with_the_429(gw, model, wait):
    url, key, spend, fakes = gw
    before = fakes[model].hits
    started = time.monotonic()
    r = _post(url, key, model)
    assert time.monotonic() - started < 1.0
    assert r.status_code == 429 and r.headers["retry-after"] == wait
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    assert fakes[model].hits - before == 1
    row = _row(spend, r.headers["x-request-id"])
    assert row["status"] == 429 and row["cost_nanos"] == 0  # a 429 costs nothing upstream


# -- work done, then the connection reset ----------------------------------------------------


def _bound(app: Any, model: str, stream: bool = False) -> float:
    """The most one attempt of _post's request can cost, as the planner bounds it."""
    from thrifty.pipeline.schemas import ChatRequest
    from thrifty.spend.contract import Principal

    plan = app.gw.plan_chat(Principal(team_id="retry"), ChatRequest(_body(model, stream)))
    return plan.bound(model)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_work_then_reset_is_a_counted_retry_charged_its_bound(gw, stream):
    url, key, spend, fakes = gw
    fake = fakes["reset"]
    before = fake.hits
    r = _post(url, key, "reset", stream=stream)
    assert r.status_code == 502
    generations = fake.hits - before
    row = _row(spend, r.headers["x-request-id"])
    # every generation the upstream did is an attempt the client and the ledger see
    assert generations == 2 == int(r.headers["x-thrifty-retries"]) + 1 == row["retries"] + 1
    assert row["error_type"] == "cost_estimated"
    assert "2 attempts reached the upstream unanswered" in row["reason"]
    # charged conservatively: each lost attempt the most it could cost, more than it did
    bound = _bound(spend.app, "reset", stream)
    assert abs(row["cost_nanos"] - 2 * bound * 1e9) <= 2
    assert bound > GENERATION_USD


def test_a_reset_then_an_answer_bills_both(gw):
    url, key, spend, fakes = gw
    fake = fakes["reset_once"]
    r = _post(url, key, "reset_once")
    assert r.status_code == 200 and fake.hits == 2
    assert r.headers["x-thrifty-retries"] == "1"
    row = _row(spend, r.headers["x-request-id"])
    assert row["retries"] == 1 and row["error_type"] == "cost_estimated"
    # the answer at its real cost, the lost attempt at its bound
    expected = GENERATION_USD + _bound(spend.app, "reset_once")
    assert abs(row["cost_nanos"] - expected * 1e9) <= 2
    # the client is told what was charged, the estimate included
    assert abs(float(r.headers["x-thrifty-cost-usd"]) * 1e9 - row["cost_nanos"]) <= 1


def test_a_pooled_connection_reset_after_the_write_is_not_resent_silently(gw):
    """Issue 11, point 5: the stale keep-alive case. The first request is answered and its
    connection pooled; the next one, on that connection, is generated and then reset. It used
    to be sent again on a new connection with x-thrifty-retries: 0 and billed $0."""
    url, key, spend, fakes = gw
    fake = fakes["reset_after_one"]
    assert _post(url, key, "reset_after_one").status_code == 200
    before = fake.hits
    r = _post(url, key, "reset_after_one")
    generations = fake.hits - before
    row = _row(spend, r.headers["x-request-id"])
    assert generations == int(r.headers["x-thrifty-retries"]) + 1 == row["retries"] + 1
    assert row["cost_nanos"] >= generations * GENERATION_USD * 1e9 > 0


def test_lost_attempts_are_counted_in_the_metrics(gw):
    url, key, _spend, _fakes = gw

    def metrics() -> tuple[float, float]:
        lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
        retries = next(float(ln.split()[-1]) for ln in lines if ln.startswith("thrifty_retries_total "))
        estimated = sum(
            float(ln.split()[-1]) for ln in lines
            if ln.startswith("thrifty_upstream_errors_total") and 'type="cost_estimated"' in ln
        )
        return retries, estimated

    retries, estimated = metrics()
    assert _post(url, key, "reset").status_code == 502
    assert metrics() == (retries + 1, estimated + 1)


def test_openai_client_sees_the_retries(gw):
    url, key, _spend, fakes = gw
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    before = fakes["reset_once"].hits
    fakes["reset_once"].state.behaviour.fail_first = fakes["reset_once"].hits + 1
    raw = client.chat.completions.with_raw_response.create(model="reset_once", messages=MSG)
    assert raw.headers["x-thrifty-retries"] == "1"
    assert fakes["reset_once"].hits - before == 2
