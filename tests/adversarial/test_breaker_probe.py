"""One tenant must not switch a model off for everyone (issue 11.2).

With a deployment's breaker half-open, a request from team X that takes the probe and gets no
upstream outcome (a failure inside the gateway, a cancelled call, an answer that says nothing
about health such as a 400) must give the probe back: team Y is served as soon as the upstream
is, not refused with ``503 circuit open`` until a restart.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from adv_setup import PRICE, Gateway, make_keys, write_toml

from thrifty.config import build_config
from thrifty.pipeline.planner import Gateway as Pipeline
from thrifty.pipeline.planner import Plan, Served
from thrifty.providers.base import UpstreamError
from thrifty.spend.contract import OpenSpendControl
from thrifty.testing.fake_upstream import FakeUpstream

COOLDOWN = 0.5
ASK = [{"role": "user", "content": "hello"}]


def _deep(levels: int) -> dict:
    doc: dict = {"leaf": 1}
    for _ in range(levels):
        doc = {"a": doc}
    return doc


@pytest.mark.parametrize("bad", ["upstream_400", "deep_body"])
def test_probe_taken_by_a_bad_request_is_given_back(tmp_path, bad):
    # The upstream fails once (the breaker opens), then answers; it refuses max_tokens with 400.
    with FakeUpstream("flaky", fail_first=1) as fake:
        fake.state.reasoning_models = frozenset({"m"})
        db_url = f"sqlite:///{tmp_path / 'gw' / 'spend.db'}"
        (tmp_path / "gw").mkdir()
        keys = make_keys(db_url, {"x": None, "y": None})
        config = write_toml(tmp_path / "gw.toml", {
            "data_dir": str(tmp_path / "gw"),
            "retry": {"attempts": 1},
            "circuit_breaker": {"failures": 1, "cooldown": COOLDOWN},
            "spend": {"database_url": db_url},
            "providers": {"up": {"type": "openai", "base_url": fake.base_url}},
            "models": {"m": {"provider": "up", **PRICE, "route": False}},
        })
        with Gateway(config, tmp_path / "gw.log") as gw:
            def post(team: str, body: dict) -> httpx.Response:
                return httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", **body},
                                  headers={"authorization": f"Bearer {keys[team]}"}, timeout=30)

            assert post("y", {"messages": ASK}).status_code == 502  # the upstream's 500: open
            time.sleep(COOLDOWN * 1.5)  # half-open: the next request is the probe
            if bad == "upstream_400":
                r = post("x", {"messages": ASK, "max_tokens": 5})
                assert r.status_code == 400 and "max_completion_tokens" in r.text, r.text
            else:
                r = post("x", {"messages": ASK, "metadata": _deep(300)})
                assert r.status_code == 400 and "nested" in r.json()["error"]["message"], r.text
            statuses = [post("y", {"messages": ASK}).status_code for _ in range(5)]
    assert statuses == [200] * 5, statuses


def _pipeline(tmp_path) -> tuple[Pipeline, Plan]:
    config = build_config({
        "data_dir": str(tmp_path),
        "retry": {"attempts": 1},
        "circuit_breaker": {"failures": 1, "cooldown": 0.0},
        "providers": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"provider": "up", **PRICE, "route": False}},
    }, env={})
    gw = Pipeline(config, OpenSpendControl(), {"up": object()}, router=None, frontier=None)  # type: ignore[arg-type]
    mc = config.models["m"]
    return gw, Plan("m", [mc], "test", 10, 10, 0.0)


@pytest.mark.parametrize("failure", ["gateway_bug", "cancelled", "upstream_400"])
def test_probe_is_released_without_an_upstream_outcome(tmp_path, failure):
    gw, plan = _pipeline(tmp_path)
    breaker = gw.breakers["up/m"]
    breaker.failure()  # open; with cooldown 0 it is half-open at once
    assert breaker.state == "half-open"

    async def call(provider, body):
        if failure == "gateway_bug":
            raise KeyError("a bug before the upstream call")
        if failure == "upstream_400":
            raise UpstreamError(400, "bad parameter", retryable=False)
        await asyncio.Event().wait()  # never answers: the client goes away

    async def run() -> None:
        task = asyncio.create_task(gw._attempts(plan, Served(), call, {"messages": ASK}))
        await asyncio.sleep(0.01)
        if failure == "cancelled":
            task.cancel()
        with pytest.raises((KeyError, UpstreamError, asyncio.CancelledError)):
            await task

    asyncio.run(run())
    assert not breaker.probing and breaker.allow(), "the probe was given back: the next request probes"


def test_only_upstream_outcomes_move_the_breaker(tmp_path):
    gw, plan = _pipeline(tmp_path)
    breaker = gw.breakers["up/m"]
    breaker.failure()

    async def ok(provider, body):
        return {"ok": True}

    async def fails(provider, body):
        raise UpstreamError(503, "overloaded", retryable=True)

    assert asyncio.run(gw._attempts(plan, Served(), ok, {})) == {"ok": True}
    assert breaker.state == "closed"
    with pytest.raises(UpstreamError):
        asyncio.run(gw._attempts(plan, Served(), fails, {}))
    assert breaker.state in ("open", "half-open") and not breaker.probing
