"""Every bad input gets its documented error, in the calling API's own format, never a 500."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from gw_openai_schema import validate

MSG = [{"role": "user", "content": "hi"}]


def post(
    url: str, path: str, content: bytes | None = None, json: object = None, **kw
) -> httpx.Response:
    return httpx.post(url + path, content=content, json=json, timeout=10, **kw)


def openai_error(
    r: httpx.Response, status: int, code: str | None, param: str | None = None
) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["param"] == param
    assert "Traceback" not in err["message"] and len(err["message"]) > 10
    return err


@pytest.mark.parametrize(
    "content, code, fragment",
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "empty"),
        (b"[1, 2]", "invalid_json", "JSON object"),
    ],
)
def test_malformed_json(gateway, content, code, fragment):
    url, _ = gateway
    err = openai_error(post(url, "/v1/chat/completions", content), 400, code)
    assert fragment in err["message"]


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"messages": MSG}, "model", "missing_required_parameter"),
        ({"model": 5, "messages": MSG}, "model", "invalid_type"),
        ({"model": "m-ok"}, "messages", "missing_required_parameter"),
        ({"model": "m-ok", "messages": "hi"}, "messages", "invalid_type"),
        ({"model": "m-ok", "messages": []}, "messages", "empty_array"),
        (
            {"model": "m-ok", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": "m-ok", "messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
            "invalid_type",
        ),
        ({"model": "m-ok", "messages": MSG, "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "m-ok", "messages": MSG, "max_tokens": "10"}, "max_tokens", "invalid_type"),
        ({"model": "m-ok", "messages": MSG, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"model": "m-ok", "messages": MSG, "temperature": 7}, "temperature", "invalid_value"),
        ({"model": "m-ok", "messages": MSG, "tools": {}}, "tools", "invalid_type"),
        # JSON's true is not a number, nor a count; a role that is not a string at all.
        ({"model": "m-ok", "messages": MSG, "temperature": True}, "temperature", "invalid_type"),
        ({"model": "m-ok", "messages": MSG, "max_tokens": True}, "max_tokens", "invalid_type"),
        ({"model": "m-ok", "messages": MSG, "n": 1.5}, "n", "invalid_type"),
        ({"model": "m-ok", "messages": MSG, "top_p": -0.1}, "top_p", "invalid_value"),
        (
            {"model": "m-ok", "messages": [{"role": ["user"], "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        # Two bad fields: the first in the documented order is reported, whatever the body's
        # key order (stream before max_tokens before temperature).
        (
            {"model": "m-ok", "messages": MSG, "temperature": 9, "max_tokens": 0, "stream": 1},
            "stream",
            "invalid_type",
        ),
        (
            {"model": "m-ok", "messages": MSG, "temperature": 9, "max_tokens": 0},
            "max_tokens",
            "invalid_value",
        ),
    ],
)
def test_wrong_fields(gateway, body, param, code):
    url, _ = gateway
    openai_error(post(url, "/v1/chat/completions", json=body), 400, code, param)


def test_usual_and_null_optional_fields_are_accepted(gateway):
    """The values accepted without their full check, and nulls (which the full check accepts)."""
    url, _ = gateway
    for extra in (
        {"max_tokens": 5, "temperature": 0, "top_p": 1, "n": 1, "stream": False},
        {"temperature": 1.5, "max_completion_tokens": 7},
        {"max_tokens": None, "temperature": None, "stream": None},
    ):
        r = post(url, "/v1/chat/completions", json={"model": "m-ok", "messages": MSG, **extra})
        assert r.status_code == 200, (extra, r.text)


def test_unknown_model_via_sdk(gateway):
    url, _ = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert info.value.code == "model_not_found" and "no-such-model" in info.value.message


def test_body_too_large(gateway):
    url, _ = gateway
    big = b'{"model":"m-ok","messages":[{"role":"user","content":"' + b"x" * 300_000 + b'"}]}'
    openai_error(post(url, "/v1/chat/completions", big), 413, "request_too_large")
    r = post(url, "/v1/messages", big)
    assert r.status_code == 413 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "request_too_large"


def test_prompt_longer_than_context_window(gateway):
    url, _ = gateway
    body = {
        "model": "m-ok",
        "messages": [{"role": "user", "content": "word " * 3000}],
    }  # window is 2000
    err = openai_error(
        post(url, "/v1/chat/completions", json=body), 400, "context_length_exceeded", "messages"
    )
    assert "2000 tokens" in err["message"]


def test_unpriced_model_is_refused(gateway):
    url, _ = gateway
    err = openai_error(
        post(url, "/v1/chat/completions", json={"model": "m-unpriced", "messages": MSG}),
        400,
        "model_not_priced",
        "model",
    )
    assert "input_cost_per_token" in err["message"]


def test_replay_unknown_prompt_is_clear(gateway):
    url, _ = gateway
    err = openai_error(
        post(url, "/v1/chat/completions", json={"model": "claude-v1", "messages": MSG}),
        400,
        "replay_unknown_prompt",
    )
    assert "recorded" in err["message"]


def test_unknown_path_and_method(gateway):
    url, _ = gateway
    openai_error(httpx.get(url + "/v1/nothing"), 404, "not_found")
    openai_error(httpx.get(url + "/v1/chat/completions"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"model": "m-ok", "messages": MSG}, "max_tokens"),
        ({"max_tokens": 10, "messages": MSG}, "model"),
        ({"model": "m-ok", "max_tokens": 10, "messages": "hi"}, "messages"),
        (
            {"model": "m-ok", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
            "role",
        ),
    ],
)
def test_anthropic_format_errors(gateway, body, fragment):
    url, _ = gateway
    r = post(url, "/v1/messages", json=body)
    assert r.status_code == 400
    doc = r.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert fragment in doc["error"]["message"]


def test_anthropic_sdk_sees_typed_errors(gateway):
    url, _ = gateway
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=5, messages=MSG)
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="m-ok", max_tokens=5, messages=[{"role": "user", "content": 3}]
        )
    r = post(url, "/v1/messages", b"{oops")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


class _Buggy:
    """An adapter with a bug (raises a plain exception), to check nothing leaks to the client."""

    name = "ok"

    async def start(self):
        pass

    async def close(self):
        pass

    async def chat(self, body, timeouts):
        raise RuntimeError("secret internal detail")

    async def chat_stream(self, body, timeouts):
        yield [
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
            }
        ]
        raise RuntimeError("secret internal detail")


def test_internal_errors_never_leak_a_traceback(upstreams, tmp_path):
    from gw_setup import gateway_doc

    from thrifty.config import build_config
    from thrifty.gateway.assemble import create_app
    from thrifty.spend.contract import OpenSpendControl
    from thrifty.testing.server import running

    app = create_app(
        build_config(gateway_doc(upstreams, tmp_path), env={}),
        spend=OpenSpendControl(),
        providers={"ok": _Buggy()},
    )
    with running(app) as url:
        err = openai_error(
            post(url, "/v1/chat/completions", json={"model": "m-ok", "messages": MSG}),
            500,
            "internal_error",
        )
        assert "secret" not in err["message"] and "req_" in err["message"]
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        got = []
        with pytest.raises(openai.APIError) as info:
            for chunk in client.chat.completions.create(model="m-ok", messages=MSG, stream=True):
                got.append(chunk)  # noqa: PERF402 (keeps the chunks read before the stream breaks)
        assert got and "secret" not in str(info.value)
