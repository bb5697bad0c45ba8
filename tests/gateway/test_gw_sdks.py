"""The official openai and anthropic SDKs work unchanged against the gateway, streaming too,
and every body and chunk validates against OpenAI's published schemas."""

from __future__ import annotations

import anthropic
import httpx
import openai
import orjson
import pytest
from gw_openai_schema import validate

from thrifty.providers.replay_records import read_packaged
from thrifty.testing.fake_upstream import REPLY

MSG = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def oai(gateway):
    url, _ = gateway
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def anth(gateway):
    url, _ = gateway
    return anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0)


def test_openai_non_streamed_with_route_headers(oai):
    raw = oai.chat.completions.with_raw_response.create(model="m-ok", messages=MSG)
    resp = raw.parse()
    assert resp.choices[0].message.content == REPLY
    assert resp.usage.prompt_tokens == 12 and resp.usage.completion_tokens == 9
    validate(orjson.loads(raw.http_response.content), "CreateChatCompletionResponse")
    h = raw.headers
    assert h["x-thrifty-model"] == "m-ok"
    assert h["x-thrifty-route-reason"] == "explicit model"
    assert float(h["x-thrifty-cost-usd"]) == pytest.approx(12 * 1e-6 + 9 * 2e-6)
    # counterfactual: same tokens on gpt-4-1106-preview ($10/$30 per M)
    assert float(h["x-thrifty-frontier-cost-usd"]) == pytest.approx(12 * 10e-6 + 9 * 30e-6)
    assert h["x-request-id"].startswith("req_")
    assert h["x-thrifty-retries"] == "0" and h["x-thrifty-fallbacks"] == "0"


def test_upstream_gets_provider_model_name_and_passthrough_fields(oai, upstreams):
    tools = [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    oai.chat.completions.create(
        model="m-ok", messages=MSG, tools=tools, seed=7, response_format={"type": "json_object"}
    )
    sent = upstreams["ok"].state.last_body
    assert sent["model"] == "up-ok"
    assert (
        sent["tools"] == tools
        and sent["seed"] == 7
        and sent["response_format"] == {"type": "json_object"}
    )


def test_openai_streaming_chunks_validate(oai, gateway):
    stream = oai.chat.completions.create(
        model="m-ok", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[-1].usage.completion_tokens == 9
    url, _ = gateway
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"model": "m-ok", "messages": MSG, "stream": True},
    ) as r:
        assert r.headers["x-thrifty-model"] == "m-ok"
        raw_lines = list(r.iter_lines())
    lines = [ln for ln in raw_lines if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    comment = next(ln for ln in raw_lines if ln.startswith(": thrifty cost_usd="))
    assert float(comment.split("cost_usd=")[1].split()[0]) == pytest.approx(
        12 * 1e-6 + 9 * 2e-6, abs=1e-8
    )
    for ln in lines[:-1]:
        chunk = orjson.loads(ln[6:])
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["choices"], "no usage chunk unless the client asked for it"


def test_anthropic_sdk_via_openai_upstream(anth):
    msg = anth.messages.create(model="m-ok", max_tokens=50, system="Be brief.", messages=MSG)
    assert msg.content[0].text == REPLY
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 12 and msg.usage.output_tokens == 9
    with anth.messages.stream(model="m-ok", max_tokens=50, messages=MSG) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == REPLY
    assert final.usage.output_tokens == 9


def test_openai_sdk_via_anthropic_native_upstream(oai, upstreams):
    resp = oai.chat.completions.create(
        model="m-anth", messages=[{"role": "system", "content": "S"}, *MSG]
    )
    assert resp.choices[0].message.content == REPLY
    assert resp.usage.prompt_tokens == 12 and resp.usage.completion_tokens == 9
    sent = upstreams["ok"].state.last_body
    assert sent["system"] == "S" and sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}
    ]
    chunks = list(
        oai.chat.completions.create(
            model="m-anth", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == REPLY
    assert chunks[-1].usage.completion_tokens == 9


def test_replay_answers_recorded_prompt_with_recorded_tokens(oai, anth):
    rec = next(r for r in read_packaged() if r.model == "claude-v1")
    resp = oai.chat.completions.create(
        model="claude-v1", messages=[{"role": "user", "content": rec.prompt}]
    )
    assert resp.choices[0].message.content == rec.response
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (
        rec.prompt_tokens,
        rec.completion_tokens,
    )
    msg = anth.messages.create(
        model="claude-v1", max_tokens=100, messages=[{"role": "user", "content": rec.prompt}]
    )
    assert msg.content[0].text == rec.response


def test_embeddings_passthrough(oai):
    raw = oai.embeddings.with_raw_response.create(model="emb", input=["a", "b"])
    resp = raw.parse()
    assert len(resp.data) == 2 and resp.data[0].embedding == [0.1, 0.2, 0.3]
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(10 * 1e-7)


def test_models_health_ready_metrics(oai, gateway):
    url, _ = gateway
    ids = {m.id for m in oai.models.list()}
    assert {"m-ok", "m-anth", "claude-v1", "auto"} <= ids
    validate(httpx.get(url + "/v1/models").json(), "ListModelsResponse")
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    oai.chat.completions.create(model="m-ok", messages=MSG)
    text = httpx.get(url + "/metrics").text
    assert 'thrifty_requests_total{endpoint="chat.completions",model="m-ok",status="200"}' in text
    assert "thrifty_request_duration_seconds_bucket" in text
