"""Routing only to models that can serve the request (function calling, vision, structured
output), and adapting the body for OpenAI reasoning models the gateway chose, through real
gateways on loopback over the fake OpenAI-compatible upstream."""

from __future__ import annotations

from typing import ClassVar

import anthropic
import httpx
import openai
import pytest
from gw_setup import serve_gateway
from test_gw_spend import RecordingSpend

from thrifty.testing.fake_upstream import USAGE, FakeUpstream

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
IMAGE = [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NO = {"supports_function_calling": False, "supports_vision": False, "supports_response_schema": False}
ALL = {"supports_function_calling": True, "supports_vision": True, "supports_response_schema": True}


def price(inp: float) -> dict[str, float]:
    return {
        "input_cost_per_token": inp,
        "output_cost_per_token": 2 * inp,
        "context_window": 100_000,
        "max_output_tokens": 1000,
    }


@pytest.fixture(scope="module")
def reasoning_upstream():
    """An upstream that refuses max_tokens and sampling parameters for 'o-up', as OpenAI does."""
    with FakeUpstream("ok") as fake:
        fake.state.reasoning_models = frozenset({"o-up"})
        yield fake


def capability_doc(upstreams, reasoning_upstream, tmp) -> dict:
    """Routable models, cheapest first: text-only, tools-only, vision (structured output
    unknown), an OpenAI reasoning model (tools, structured output), then an expensive
    all-rounder. Plus named-only models on a failing upstream with fallbacks."""
    return {
        "data_dir": str(tmp),
        "router_path": str(tmp / "no-router"),  # no router: "auto" serves the cheapest candidate
        "router": {"explore": False, "price_prior": 0.0},  # its best estimate on flat priors
        "providers": {
            "ok": {"type": "openai", "base_url": upstreams["ok"].base_url},
            "bad": {"type": "openai", "base_url": upstreams["error500"].base_url},
            "reason": {"type": "openai", "base_url": reasoning_upstream.base_url},
            "anth": {
                "type": "anthropic",
                "base_url": f"http://127.0.0.1:{upstreams['ok'].port}",
                "api_key": "sk-ant-test",
            },
        },
        "models": {
            "text-only": {"provider": "ok", "upstream_model": "up-text", **price(1e-7), **NO},
            "tools-only": {
                "provider": "ok",
                "upstream_model": "up-tools",
                **price(2e-7),
                **NO,
                "supports_function_calling": True,
            },
            "vision": {
                "provider": "ok",
                "upstream_model": "up-vision",
                **price(3e-7),
                "supports_function_calling": False,
                "supports_vision": True,
            },
            "o-reason": {
                "provider": "reason",
                "upstream_model": "o-up",
                **price(4e-7),
                **ALL,
                "supports_vision": False,
                "supports_reasoning": True,
                "openai_reasoning_params": True,
            },
            "all-round": {"provider": "ok", "upstream_model": "up-all", **price(1e-5), **ALL},
            "failing": {
                "provider": "bad",
                **price(1e-6),
                **ALL,
                "route": False,
                "fallbacks": ["text-only", "tools-only"],
            },
            "failing-to-reason": {
                "provider": "bad",
                **price(1e-6),
                "route": False,
                "fallbacks": ["o-reason"],
            },
            "anth-reason": {  # the same facts on an Anthropic-protocol deployment: not adapted
                "provider": "anth",
                **price(1e-6),
                "route": False,
                "openai_reasoning_params": True,
            },
        },
        "retry": {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02},
        "timeouts": {"connect": 1, "first_token": 1, "total": 2},
    }


@pytest.fixture(scope="module")
def capgw(upstreams, reasoning_upstream, tmp_path_factory):
    spend = RecordingSpend()
    doc = capability_doc(upstreams, reasoning_upstream, tmp_path_factory.mktemp("caps"))
    with serve_gateway(doc, spend=spend) as (url, app):
        yield url, app, spend


@pytest.fixture
def client(capgw) -> openai.OpenAI:
    return openai.OpenAI(base_url=capgw[0] + "/v1", api_key="k", max_retries=0)


@pytest.fixture(autouse=True)
def _no_denials(capgw):
    capgw[2].deny = set()
    yield
    capgw[2].deny = set()


def served(raw) -> str:
    return raw.headers["x-thrifty-model"]


# -- routing with capabilities -----------------------------------------------------------------


def test_plain_auto_serves_the_cheapest_model(client):
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK)
    assert served(raw) == "text-only"
    assert "x-thrifty-dropped-params" not in raw.headers


def test_tools_route_to_the_cheapest_model_with_function_calling(client):
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK, tools=TOOLS)
    assert served(raw) == "tools-only"  # not text-only, which is cheaper but has no tools
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, tool_choice="none"
    )
    assert served(raw) == "text-only"  # tool_choice "none" alone needs no function calling


def test_images_route_to_vision_models_only(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": IMAGE}]
    )
    assert served(raw) == "vision"


def test_json_schema_routes_to_structured_output_models_and_unknown_counts_as_capable(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, response_format=SCHEMA
    )
    assert served(raw) == "vision"  # its structured output is unknown: treated as capable
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, response_format={"type": "json_object"}
    )
    assert served(raw) == "text-only"  # JSON mode is not json_schema


def test_several_needs_at_once(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": IMAGE}], tools=TOOLS
    )
    assert served(raw) == "all-round"


def test_the_router_decides_among_capable_models_only(upstreams, reasoning_upstream, tmp_path):
    """The filter runs before the router's decision: the candidates it scores and the costs it
    weighs are the capable models (a post-hoc filter would let it pick text-only)."""
    seen: list[set[str]] = []

    class CheapestRouter:  # the thrifty.router.Router interface, recording its candidates
        models: ClassVar[list[str]] = ["text-only", "tools-only", "vision", "o-reason", "all-round"]
        profiles: ClassVar[dict] = {}

        def score(self, prompt):
            return {m: 0.5 for m in self.models}

        def choose(self, scores, costs, profile):
            seen.append(set(costs))
            return min(costs, key=costs.__getitem__), "cheapest"

    doc = capability_doc(upstreams, reasoning_upstream, tmp_path)
    with serve_gateway(doc, spend=RecordingSpend(), router=CheapestRouter()) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        raw = c.chat.completions.with_raw_response.create(model="auto", messages=ASK, tools=TOOLS)
        assert served(raw) == "tools-only"
        assert seen[-1] == {"tools-only", "o-reason", "all-round"}
        raw = c.chat.completions.with_raw_response.create(model="auto", messages=ASK)
        assert served(raw) == "text-only"
        assert seen[-1] == set(CheapestRouter.models)


def test_policy_and_capability_filters_apply_together(capgw, client):
    _, _, spend = capgw
    spend.deny = {"tools-only"}
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK, tools=TOOLS)
    assert served(raw) == "o-reason"  # the cheapest capable model policy allows
    spend.deny = {"tools-only", "o-reason", "all-round"}  # every capable model denied
    with pytest.raises(openai.PermissionDeniedError):  # policy's answer, not a capability 400
        client.chat.completions.create(model="auto", messages=ASK, tools=TOOLS)
    assert client.chat.completions.create(model="auto", messages=ASK).model  # no tools: served


# -- no capable model: a clear 400 in the API's own format -------------------------------------


@pytest.fixture(scope="module")
def textgw(upstreams, reasoning_upstream, tmp_path_factory):
    """Only the text-only model is routable."""
    doc = capability_doc(upstreams, reasoning_upstream, tmp_path_factory.mktemp("text"))
    for name, m in doc["models"].items():
        m["route"] = name == "text-only"
    with serve_gateway(doc, spend=RecordingSpend()) as (url, app):
        yield url, app


def test_no_capable_candidate_is_a_400_in_openai_format(textgw):
    url, _ = textgw
    c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="auto", messages=ASK, tools=TOOLS)
    err = exc.value.body
    assert exc.value.code == "model_capability_missing" and err["param"] == "tools"
    assert "function calling" in err["message"] and err["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="auto", messages=[{"role": "user", "content": IMAGE}])
    assert "image input" in exc.value.body["message"] and exc.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as exc:  # the Responses API, same format
        c.responses.create(
            model="auto",
            input="Weather in Paris?",
            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        )
    assert exc.value.code == "model_capability_missing"


def test_no_capable_candidate_is_a_400_in_anthropic_format(textgw):
    url, _ = textgw
    c = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as exc:
        c.messages.create(
            model="auto",
            max_tokens=100,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        )
    assert exc.value.body["type"] == "error"
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert "function calling" in exc.value.body["error"]["message"]


# -- explicitly named models and fallback chains ----------------------------------------------


def test_a_named_model_known_to_lack_the_capability_is_refused_before_any_upstream_call(
    upstreams, client
):
    hits = upstreams["ok"].hits
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="text-only", messages=ASK, tools=TOOLS)
    assert exc.value.code == "model_capability_missing"
    assert "'text-only' does not support function calling" in exc.value.message
    assert upstreams["ok"].hits == hits
    assert client.chat.completions.create(model="text-only", messages=ASK).model  # else served


def test_the_fallback_chain_skips_incapable_models(client, capgw):
    raw = client.chat.completions.with_raw_response.create(
        model="failing", messages=ASK, tools=TOOLS
    )
    assert served(raw) == "tools-only"  # text-only, the first fallback, has no function calling
    assert raw.headers["x-thrifty-fallbacks"] == "1"
    raw = client.chat.completions.with_raw_response.create(model="failing", messages=ASK)
    assert served(raw) == "text-only"  # without tools the chain is unchanged


# -- parameter adaptation for OpenAI reasoning models -----------------------------------------


def test_routed_reasoning_model_gets_an_adapted_body_and_is_billed(
    capgw, client, reasoning_upstream
):
    _, _, spend = capgw
    spend.deny = {"tools-only"}  # so the router's cheapest capable choice is o-reason
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, tools=TOOLS, max_tokens=50, temperature=0.2, top_p=0.5
    )
    assert served(raw) == "o-reason"
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-thrifty-dropped-params"] == "temperature, top_p"
    assert raw.headers["x-thrifty-renamed-params"] == "max_tokens->max_completion_tokens"
    sent = reasoning_upstream.state.last_body
    assert sent["model"] == "o-up" and sent["max_completion_tokens"] == 50
    assert not {"max_tokens", "temperature", "top_p"} & set(sent)
    assert sent["tools"] == TOOLS and sent["messages"] == ASK  # the rest passes through
    record = spend.settled[-1]
    assert record.served_model == "o-reason" and record.status == 200
    expected = USAGE["prompt_tokens"] * 4e-7 + USAGE["completion_tokens"] * 8e-7
    assert record.cost_usd == pytest.approx(expected, rel=1e-9)
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(expected, abs=1e-9)


def test_routed_reasoning_model_streams_with_an_adapted_body(capgw, client, reasoning_upstream):
    capgw[2].deny = {"tools-only"}
    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=ASK, tools=TOOLS, max_tokens=50, presence_penalty=0.5, stream=True
    ) as resp:
        assert resp.headers["x-thrifty-dropped-params"] == "presence_penalty"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text and "presence_penalty" not in reasoning_upstream.state.last_body


def test_a_fallback_to_a_reasoning_model_is_adapted(client, reasoning_upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="failing-to-reason", messages=ASK, max_tokens=20, temperature=0.3
    )
    assert served(raw) == "o-reason" and raw.headers["x-thrifty-fallbacks"] == "1"
    assert raw.headers["x-thrifty-dropped-params"] == "temperature"
    assert reasoning_upstream.state.last_body["max_completion_tokens"] == 20


def test_a_named_reasoning_model_keeps_its_sampling_parameters(client, reasoning_upstream):
    """Named by the client: only the pure alias max_tokens is renamed; sampling parameters are
    sent as given, so the provider's own error reaches the client."""
    raw = client.chat.completions.with_raw_response.create(
        model="o-reason", messages=ASK, max_tokens=30
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-thrifty-renamed-params"] == "max_tokens->max_completion_tokens"
    assert "x-thrifty-dropped-params" not in raw.headers
    assert reasoning_upstream.state.last_body["max_completion_tokens"] == 30
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="o-reason", messages=ASK, temperature=0.2)
    assert "Unsupported value: 'temperature' does not support 0.2" in exc.value.message
    assert reasoning_upstream.state.last_body["temperature"] == 0.2


def test_an_explicit_max_completion_tokens_wins_over_max_tokens(capgw, reasoning_upstream):
    r = httpx.post(
        capgw[0] + "/v1/chat/completions",
        headers={"authorization": "Bearer k"},
        json={"model": "o-reason", "messages": ASK, "max_tokens": 99, "max_completion_tokens": 7},
    )
    assert r.status_code == 200, r.text
    sent = reasoning_upstream.state.last_body
    assert sent["max_completion_tokens"] == 7 and "max_tokens" not in sent


def test_non_reasoning_models_and_other_protocols_are_not_adapted(client, upstreams, capgw):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, max_tokens=50, temperature=0.2
    )
    assert served(raw) == "text-only"
    assert "x-thrifty-dropped-params" not in raw.headers
    sent = upstreams["ok"].state.last_body
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.2
    app = capgw[1]
    assert [d.reasoning_params for d in app.gw.models["o-reason"].deployments] == [True]
    assert [d.reasoning_params for d in app.gw.models["anth-reason"].deployments] == [False]


def test_the_fake_refuses_as_openai_does(reasoning_upstream):
    """The switch the tests above rely on: without the gateway's adaptation, these fail."""
    c = openai.OpenAI(base_url=reasoning_upstream.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="o-up", messages=ASK, max_tokens=5)
    assert exc.value.code == "unsupported_parameter" and exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="o-up", messages=ASK, top_p=0.5)
    assert exc.value.code == "unsupported_value"
    assert c.chat.completions.create(model="o-up", messages=ASK, temperature=1).choices
    assert c.chat.completions.create(model="up-other", messages=ASK, max_tokens=5).choices
