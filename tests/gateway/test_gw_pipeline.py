"""The one request pipeline, end to end through a real server, the SDKs and the real ledger:
its stages on every API (caches, cascade and deferral on /v1/responses too), refused requests
in the ledger, a client that gives up cancelling the upstream call, a stream stopped at the
budget hold, and the cost comment on every kind of stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from gw_setup import gateway_doc

from thrifty.config import build_config
from thrifty.spend import admin_ops
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running, served_app

LONG = "word " * 3000  # an upstream that ignores max_tokens answers with all of it


@pytest.fixture(scope="module")
def long_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("ok", reply=LONG) as f:
        yield f


@pytest.fixture(scope="module")
def served(upstreams, long_upstream, tmp_path_factory) -> Iterator[tuple[str, str, Any]]:
    doc = gateway_doc(upstreams, tmp_path_factory.mktemp("pipeline"))
    doc["providers"]["long"] = {"type": "openai", "base_url": long_upstream.base_url}
    price = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "route": False}
    doc["models"]["m-long"] = {"provider": "long", **price}
    doc["models"]["m-ok2"] = {"provider": "ok2", **price}
    # Output dear, input free: a one-token hold that the fake's 9-token answers overrun.
    doc["models"]["m-dear"] = {
        "provider": "ok", "input_cost_per_token": 0.0, "output_cost_per_token": 1e-5, "route": False
    }
    doc["cache"] = {"deterministic": True}
    doc["cascade"] = {"models": ["m-ok2", "m-ok"]}
    doc["batches"] = {"poll": 0.05}
    app, spend, key = served_app(build_config(doc, env={}), "pipe")
    with running(app) as url:
        yield url, key, (app, spend)


def rows(spend: Any, where: str = "1 = 1", params: tuple = ()) -> list[tuple]:
    spend.flush()
    return spend.db.all(
        "SELECT request_id, status, error_type, cost_nanos, cache_hit, batch, endpoint, route_reason"
        f" FROM ledger WHERE {where} ORDER BY ts",
        params,
    )


def wait_stored(app: Any) -> None:
    deadline = time.monotonic() + 5
    while app.pending_stores and time.monotonic() < deadline:
        time.sleep(0.005)


def test_responses_are_cached_like_chat_completions(served):
    url, key, (app, spend) = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    first = client.responses.with_raw_response.create(
        model="m-ok", input="cache me, Responses API", temperature=0
    )
    wait_stored(app)
    again = client.responses.with_raw_response.create(
        model="m-ok", input="cache me, Responses API", temperature=0
    )
    assert (first.headers["x-thrifty-cache"], again.headers["x-thrifty-cache"]) == (
        "miss",
        "hit-exact",
    )
    a, b = first.parse(), again.parse()
    assert b.object == "response" and b.output_text == a.output_text and b.status == "completed"
    assert b.usage.input_tokens == a.usage.input_tokens
    (hit,) = rows(spend, "request_id = ?", (again.headers["x-request-id"],))
    assert hit[1] == 200 and hit[3] == 0 and hit[4] and hit[6] == "responses"
    # The chat completions API keeps its own answers: the same text is a miss there.
    chat = client.chat.completions.with_raw_response.create(
        model="m-ok", temperature=0, messages=[{"role": "user", "content": "cache me, Responses API"}]
    )
    assert chat.headers["x-thrifty-cache"] == "miss"


def test_a_cached_answer_streams_in_every_format(served):
    url, key, (app, spend) = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    client.responses.create(model="m-ok", input="stream a hit", temperature=0)
    wait_stored(app)
    with client.responses.stream(model="m-ok", input="stream a hit", temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text
    ant = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    exact = {"x-thrifty-cache": "exact"}
    ant.messages.create(
        model="m-ok", max_tokens=20, messages=[{"role": "user", "content": "hi a"}],
        extra_headers=exact,
    )
    wait_stored(app)
    with ant.messages.stream(
        model="m-ok", max_tokens=20, messages=[{"role": "user", "content": "hi a"}],
        extra_headers=exact,
    ) as s:
        assert "".join(s.text_stream)
    assert rows(spend, "cache_hit = 1 AND endpoint = 'messages'")


def test_cascade_and_deferral_on_the_responses_api(served):
    url, key, (_app, spend) = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    out = client.responses.with_raw_response.create(model="auto-cascade", input="What is 2+2?")
    assert out.headers["x-thrifty-cascade"].startswith("m-ok2:")
    assert out.parse().object == "response" and out.parse().output_text
    r = httpx.post(
        url + "/v1/responses",
        json={"model": "m-ok", "input": "later, please"},
        headers={"authorization": f"Bearer {key}", "x-thrifty-defer": "batch"},
    )
    assert r.status_code == 202 and r.json()["endpoint"] == "/v1/responses", r.text
    deadline = time.monotonic() + 15
    batch = client.batches.retrieve(r.json()["id"])
    while batch.status != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    line = httpx.get(
        url + f"/v1/files/{batch.output_file_id}/content",
        headers={"authorization": f"Bearer {key}"},
    ).json()
    assert line["response"]["status_code"] == 200
    assert line["response"]["body"]["object"] == "response"
    (billed,) = rows(spend, "batch = 1 AND endpoint = 'responses'")
    assert billed[1] == 200 and billed[3] > 0


def test_refused_requests_are_in_the_ledger_and_unauthenticated_ones_are_not(served):
    url, key, (_app, spend) = served
    auth = {"authorization": f"Bearer {key}"}
    before = len(rows(spend))
    cases = [
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404),
        ({"model": "m-ok", "messages": "not a list"}, 400),
        ({"model": "m-unpriced", "messages": [{"role": "user", "content": "x"}]}, 400),
    ]
    ids = []
    for body, status in cases:
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == status, r.text
        ids.append(r.headers["x-request-id"])
    bad = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert bad.status_code == 400
    ids.append(bad.headers["x-request-id"])
    nobody = httpx.post(
        url + "/v1/chat/completions",
        json=cases[0][0],
        headers={"authorization": "Bearer sk-thr-not-a-key"},
    )
    assert nobody.status_code == 401
    got = {r[0]: r for r in rows(spend)}
    assert len(got) == before + len(ids)  # every refusal, and not the request without a key
    for rid, (_, status) in zip(ids, [*cases, (None, 400)]):
        row = got[rid]
        assert row[1] == status and row[3] == 0 and row[2], row
        assert row[7] and row[7].startswith("refused:"), row
    metrics = httpx.get(url + "/metrics").text
    assert 'status="401"' in metrics


def test_a_policy_refusal_names_the_rule_in_the_ledger(served):
    url, key, (_app, spend) = served
    admin_ops.set_policy(spend.db, "team", "pipe", {"deny_models": ["m-ok2"]})
    spend.reload()
    try:
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m-ok2", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {key}"},
        )
        assert r.status_code == 403, r.text
        (row,) = rows(spend, "request_id = ?", (r.headers["x-request-id"],))
        assert row[1] == 403 and row[2] == "policy_error" and "m-ok2" in row[7]
    finally:
        admin_ops.set_policy(spend.db, "team", "pipe", {})
        spend.reload()


def test_a_client_that_gives_up_cancels_the_upstream_call_and_is_settled(served, upstreams):
    """A non-streamed call to a hanging upstream whose client gives up: the upstream call is
    cancelled at once and the request settled (499, its hold charged: the real cost is
    unknowable), so its hold does not outlive it."""
    url, key, (_app, spend) = served
    hang = upstreams["hang"]
    before = hang.hits
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": "m-hang",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hang"}],
            },
            headers={"authorization": f"Bearer {key}"},
            timeout=0.3,
        )
    deadline = time.monotonic() + 5
    found: list[tuple] = []
    while not found and time.monotonic() < deadline:
        found = rows(spend, "status = 499")
        time.sleep(0.02)
    assert found, "the abandoned request is not in the ledger"
    row = found[-1]
    assert row[2] == "client_disconnected" and row[3] > 0 and "charged the hold" in row[7]
    assert hang.hits == before + 1  # cancelled: no retry, no fallback after the client left
    assert sum(spend.budgets._held.values()) == 0


def test_a_stream_past_the_hold_is_stopped_and_billed_within_it(served):
    """An upstream that ignores max_tokens: the relay stops once the output passes what the
    budget hold covers, says so to the client in the stream's error format, and bills no more
    than was held."""
    url, key, (_app, spend) = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.with_raw_response.create(
        model="m-long",
        max_tokens=5,
        stream=True,
        messages=[{"role": "user", "content": "say a lot"}],
    )
    rid = stream.headers["x-request-id"]
    with pytest.raises(openai.APIError, match="max_tokens"):
        for _ in stream.parse():
            pass
    (row,) = rows(spend, "request_id = ?", (rid,))
    assert row[2] == "hold_exhausted"
    whole = 3000 * 2e-6  # what relaying the whole answer would have cost, at least
    assert 0 < row[3] < whole * 1e9 / 10


def test_every_stream_carries_its_cost_in_a_comment(served):
    url, key, _ = served
    auth = {"authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01"}
    for path, body in (
        ("/v1/chat/completions", {"model": "m-ok", "stream": True, "messages": [{"role": "user", "content": "c"}]}),
        ("/v1/messages", {"model": "m-ok", "stream": True, "max_tokens": 10, "messages": [{"role": "user", "content": "c"}]}),
        ("/v1/responses", {"model": "m-ok", "stream": True, "input": "c"}),
    ):
        with httpx.stream("POST", url + path, json=body, headers=auth) as r:
            text = r.read().decode()
        assert r.status_code == 200 and ": thrifty cost_usd=" in text, (path, text[-300:])


def test_a_non_streamed_answer_past_its_hold_is_billed_flagged_and_counted(served):
    """A non-streamed answer is only known once complete: an upstream that ignores max_tokens
    is billed its real cost, and the overrun is flagged in the ledger and in /metrics."""
    url, key, (_app, spend) = served
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "m-dear", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    (row,) = rows(spend, "request_id = ?", (r.headers["x-request-id"],))
    assert row[1] == 200 and row[2] == "hold_overrun" and row[3] == 9 * 10_000
    assert 'type="hold_overrun"' in httpx.get(url + "/metrics").text
