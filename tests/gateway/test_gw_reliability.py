"""An upstream that fails, hangs or breaks mid-stream triggers retries and fallbacks, visible
in the response headers; a break after the answer started ends with an error event."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from thrifty.config import BreakerPolicy, Deployment
from thrifty.pipeline.reliability import CircuitBreaker, order_deployments
from thrifty.testing.fake_upstream import REPLY, FakeUpstream

MSG = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def oai(gateway):
    return openai.OpenAI(base_url=gateway[0] + "/v1", api_key="x", max_retries=0)


def test_500_retries_then_falls_back(oai, upstreams):
    before = upstreams["error500"].hits
    raw = oai.chat.completions.with_raw_response.create(model="m-500", messages=MSG)
    assert raw.parse().choices[0].message.content == REPLY
    assert upstreams["error500"].hits - before == 2  # retry.attempts
    assert raw.headers["x-thrifty-model"] == "m-ok"
    assert raw.headers["x-thrifty-fallbacks"] == "1"
    assert raw.headers["x-thrifty-retries"] == "2"
    assert "error500/m-500: 500" in raw.headers["x-thrifty-attempt-errors"]


def test_500_without_fallback_is_a_clear_502(oai):
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="m-500-alone", messages=MSG)
    assert info.value.status_code == 502
    assert "after retries and fallbacks" in info.value.message
    assert info.value.response.headers["x-thrifty-retries"] == "1"
    # one request id, even though the route headers (which carry it) ride on the error
    assert len(info.value.response.headers.get_list("x-request-id")) == 1


def test_timeout_falls_back(oai, upstreams):
    raw = oai.chat.completions.with_raw_response.create(model="m-hang", messages=MSG)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-thrifty-model"] == "m-ok" and raw.headers["x-thrifty-fallbacks"] == "1"
    assert "hang/m-hang: 504" in raw.headers["x-thrifty-attempt-errors"]


def test_stream_fallback_before_first_chunk(gateway):
    with httpx.stream(
        "POST",
        gateway[0] + "/v1/chat/completions",
        timeout=10,
        json={"model": "m-500", "messages": MSG, "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-thrifty-model"] == "m-ok" and r.headers["x-thrifty-fallbacks"] == "1"
        assert list(r.iter_lines())[-2] == "data: [DONE]"


def test_stream_broken_mid_answer_ends_with_error_event(oai, gateway):
    stream = oai.chat.completions.create(model="m-break", messages=MSG, stream=True)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.append(chunk)  # noqa: PERF402 (keeps the chunks read before the stream breaks)
    assert seen, "the answer had started"
    assert "broke mid-answer" in str(info.value)
    with httpx.stream(
        "POST",
        gateway[0] + "/v1/chat/completions",
        timeout=10,
        json={"model": "m-break", "messages": MSG, "stream": True},
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert '"code":"stream_broken"' in lines[-1] and "[DONE]" not in "".join(lines)


def test_anthropic_stream_broken_mid_answer(gateway):
    client = anthropic.Anthropic(base_url=gateway[0], api_key="x", max_retries=0)
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(model="m-break", max_tokens=20, messages=MSG) as s,
    ):
        for _ in s.text_stream:
            pass
    assert "broke mid-answer" in str(info.value)


def test_load_balancing_spreads_over_deployments(oai, upstreams):
    a0, b0 = upstreams["ok"].hits, upstreams["ok2"].hits
    for _ in range(40):
        oai.chat.completions.create(model="m-lb", messages=MSG)
    a, b = upstreams["ok"].hits - a0, upstreams["ok2"].hits - b0
    assert a + b == 40 and a >= 8 and b >= 8


def test_circuit_breaker_opens_and_probes(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("thrifty.pipeline.reliability.time.monotonic", lambda: now[0])
    br = CircuitBreaker(BreakerPolicy(failures=3, cooldown=10))
    for _ in range(3):
        assert br.allow()
        br.failure()
    assert br.state == "open" and not br.allow()
    now[0] += 10
    assert br.allow() and not br.allow()  # one probe only
    br.failure()
    assert br.state == "open"
    now[0] += 10
    assert br.allow()
    br.success()
    assert br.state == "closed" and br.allow()


def test_open_circuit_skips_deployment(upstreams, tmp_path):
    from gw_setup import PRICE, serve_gateway

    bad = FakeUpstream("error500").start()
    try:
        doc = {
            "data_dir": str(tmp_path),
            "circuit_breaker": {"failures": 2, "cooldown": 60},
            "retry": {"attempts": 1, "backoff_base": 0.0},
            "providers": {
                "bad": {"type": "openai", "base_url": bad.base_url},
                "ok": {"type": "openai", "base_url": upstreams["ok"].base_url},
            },
            "models": {
                "a": {
                    "deployments": [
                        {"provider": "bad", "model": "a", "weight": 1000},
                        {"provider": "ok", "model": "a", "weight": 0.001},
                    ],
                    **PRICE,
                }
            },
        }
        with serve_gateway(doc) as (url, _):
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            for _ in range(6):
                client.chat.completions.create(model="a", messages=MSG)
        assert bad.hits <= 3  # opened after 2 failures, at most one probe... none within cooldown
    finally:
        bad.stop()


def test_order_deployments_respects_weights():
    import random

    deps = (Deployment("p", "a", 3.0), Deployment("q", "a", 1.0))
    rng = random.Random(1)
    firsts = [order_deployments(deps, rng)[0].provider for _ in range(2000)]
    assert 0.7 < firsts.count("p") / 2000 < 0.8


def test_deployment_order_hook_is_used(upstreams, tmp_path):
    """An affinity hook (e.g. prefix affinity for self-hosted pools) decides the deployment order."""
    from gw_setup import PRICE, serve_gateway

    class AlwaysSecond:
        def __init__(self, deps):
            self.deps, self.calls = deps, []

        def __contains__(self, model):
            return model == "pool"

        def order(self, model, body):
            return [self.deps[1], self.deps[0]]

        def acquire(self, model, dep):
            self.calls.append(("acquire", dep.provider))

        def release(self, model, dep):
            self.calls.append(("release", dep.provider))

    doc = {
        "data_dir": str(tmp_path),
        "providers": {
            n: {"type": "openai", "base_url": upstreams[n].base_url} for n in ("ok", "ok2")
        },
        "models": {
            "pool": {
                "deployments": [
                    {"provider": "ok", "model": "p"},
                    {"provider": "ok2", "model": "p"},
                ],
                **PRICE,
            }
        },
    }
    with serve_gateway(doc) as (url, app):
        hook = AlwaysSecond(app.gw.models["pool"].deployments)
        app.gw.affinity = hook
        before = upstreams["ok2"].hits
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        for _ in range(3):
            assert (
                client.chat.completions.with_raw_response.create(
                    model="pool", messages=MSG
                ).headers["x-thrifty-provider"]
                == "ok2"
            )
    assert upstreams["ok2"].hits - before == 3
    assert hook.calls == [("acquire", "ok2"), ("release", "ok2")] * 3
