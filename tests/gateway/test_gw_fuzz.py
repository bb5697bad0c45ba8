"""Fuzz the model endpoints with malformed requests, in-process, through the real ASGI app.

Every case is generated up front from a seeded ``random.Random`` (same cases every run): wrong
JSON types and out-of-range values for each top-level field of chat completions and Anthropic
messages, garbage message content, roles, tools and tool choices, raw bodies that are not JSON
(NaN literals, huge numbers, deep nesting, invalid UTF-8, truncated, duplicated keys), unknown
and ``auto`` model names, wrong Authorization schemes, and random mutations of valid requests.

For each case: no 5xx and no exception out of the app; an error body in the endpoint's own
format (OpenAI error JSON, Anthropic's ``{"type":"error",...}``) with no traceback in it; where
the case is known to be invalid, a 4xx, and where it is known to be valid, a 2xx; every 2xx is in
the ledger with the cost the response reported, and every request that reached an upstream is
in the ledger, whatever its status.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from gw_openai_schema import SPEC, validate
from gw_setup import gateway_doc

from thrifty.config import build_config
from thrifty.pipeline.billing import price
from thrifty.providers.base import Usage
from thrifty.providers.replay_records import read_packaged
from thrifty.spend.money import usd_to_nanos
from thrifty.testing.server import served_app

SEED = 20261121
ADMIN = "sk-thr-admin-fuzz"
CHAT, MESSAGES, EMBEDDINGS, FEEDBACK, MODELS = (
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/feedback",
    "/v1/models",
)
MODEL_MAX_OUT = 1000  # conftest.PRICE: max_output_tokens of the m-* models
CHAT_MODELS = ("m-ok", "m-anth")  # an OpenAI-compatible and an Anthropic-protocol upstream
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
}
TRACE_MARKERS = ("Traceback", 'File "', "Error(", "object has no attribute", "not subscriptable")


# -- the in-process harness --------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    app: Any
    spend: Any
    upstreams: dict[str, Any]
    key: str
    rated: list[str] = field(default_factory=list)  # request ids of served requests (feedback)

    def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Reply:
        if headers is None:
            headers = [(b"authorization", b"Bearer " + self.key.encode())]
        return self.loop.run_until_complete(asyncio.wait_for(_asgi(self.app, method, path, body, headers), 15))

    def hits(self) -> int:
        return sum(u.hits for u in self.upstreams.values())

    def ledger(self, request_id: str) -> tuple | None:
        self.spend.flush()
        return self.spend.db.one(
            "SELECT status, cost_nanos, prompt_tokens, completion_tokens, served_model, stream"
            " FROM ledger WHERE request_id = ?",
            (request_id,),
        )


async def _asgi(
    app: Any, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> Reply:
    """One HTTP request through the ASGI app, as a server would hand it over."""
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4000),
    }
    done = asyncio.Event()
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    status = 0
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            assert status == 0, "response started twice"
            status = message["status"]
            for k, v in message.get("headers", []):
                out_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            assert status, "body before response start"
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    await app(scope, receive, send)
    assert status, "the app returned without answering"
    assert done.is_set(), "the app returned before the body was complete"
    return Reply(status, out_headers, b"".join(chunks))


@pytest.fixture(scope="module")
def fuzz(upstreams, tmp_path_factory) -> Iterator[Harness]:
    """The gateway as ``thrifty serve`` builds it (spend control on SQLite, /admin, /v1/feedback),
    over the conftest's fake upstreams, driven in-process on one event loop."""
    doc = gateway_doc(upstreams, tmp_path_factory.mktemp("fuzz"))
    doc["spend"] = {"admin_key": ADMIN}
    app, spend, key = served_app(build_config(doc, env={}), "fuzz")
    loop = asyncio.new_event_loop()
    try:
        yield Harness(loop, app, spend, upstreams, key)
    finally:
        loop.run_until_complete(app.shutdown())
        loop.close()


# -- oracles -----------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _in_range(v: Any, lo: float, hi: float) -> bool:
    return _is_num(v) and math.isfinite(v) and lo <= v <= hi


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def openai_tool_ok(t: Any) -> bool:
    if not isinstance(t, dict) or not isinstance(t.get("type"), str):
        return False
    if t["type"] != "function":
        return True  # other tool kinds ("custom") pass through
    fn = t.get("function")
    params = fn.get("parameters", {}) if isinstance(fn, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(params, dict)


def _model_valid(v: Any) -> bool:
    return (v in CHAT_MODELS) if isinstance(v, str) and v else False


def _max_tokens_valid(v: Any) -> bool | None:
    return (v <= MODEL_MAX_OUT or None) if _is_int(v) and v >= 1 else False


_NO_RULE = object()


def _sampling_valid(name: str, v: Any, max_temperature: float) -> Any:
    """The rules both APIs have for temperature, top_p and stream (not None); ``_NO_RULE`` for
    another field."""
    if name == "temperature":
        return _in_range(v, 0, max_temperature)
    if name == "top_p":
        return _in_range(v, 0, 1)
    if name == "stream":
        return isinstance(v, bool)
    return _NO_RULE


def openai_field_valid(name: str, v: Any, model: str) -> bool | None:
    """True: the request is valid (2xx); False: it is invalid (4xx); None: no opinion (no 5xx)."""
    if name == "model":
        return _model_valid(v)
    if v is None:
        return name != "messages"
    if name == "messages":
        return None if isinstance(v, list) and v else False
    if name == "n":
        return (v <= 128 or None) if _is_int(v) and v >= 1 else False
    if name in ("max_tokens", "max_completion_tokens"):
        return _max_tokens_valid(v)
    if (sampling := _sampling_valid(name, v, 2)) is not _NO_RULE:
        return sampling
    if name in ("stream_options", "response_format"):
        return None if isinstance(v, dict) else False
    if name == "tools":
        if not isinstance(v, list):
            return False
        return (True if v else None) if all(openai_tool_ok(t) for t in v) else False
    if name == "tool_choice":
        if isinstance(v, str):  # (OpenAI refuses a tool choice without tools: no opinion)
            return None if v in ("none", "auto", "required") else False
        if not isinstance(v, dict) or not isinstance(v.get("type"), str):
            return False
        fn = v.get("function")
        if (fn is not None or v["type"] == "function") and not (
            isinstance(fn, dict) and isinstance(fn.get("name"), str)
        ):
            return False
        return None
    if name == "stop":
        return isinstance(v, str) or _is_str_list(v)
    return None


def anthropic_tool_ok(t: Any) -> bool:
    schema = t.get("input_schema", {}) if isinstance(t, dict) else None
    return isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(schema, dict)


def anthropic_field_valid(name: str, v: Any, model: str) -> bool | None:
    if name == "model":
        return _model_valid(v)
    if name == "max_tokens":
        return _max_tokens_valid(v)
    if v is None:
        return None if name == "messages" else True
    if name == "messages":
        return None if isinstance(v, list) else False
    if name == "system":
        if isinstance(v, str):
            return True
        if isinstance(v, list):
            return all(
                isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                for b in v
            ) or False
        return False
    if (sampling := _sampling_valid(name, v, 1)) is not _NO_RULE:
        return sampling
    if name == "stop_sequences":
        return _is_str_list(v)
    if name == "tools":
        if not isinstance(v, list):
            return False
        return all(anthropic_tool_ok(t) for t in v)
    if name == "tool_choice":
        if not isinstance(v, dict):
            return False
        kind = v.get("type")
        if kind in ("auto", "none"):
            return True
        if kind == "any":
            return None
        if kind == "tool":
            return None if isinstance(v.get("name"), str) else False
        return False
    return None


# -- case generation ---------------------------------------------------------------------------

SCALARS: list[Any] = [
    True,
    False,
    0,
    -1,
    1,
    3,
    2**31,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    0.5,
    1.5,
    -0.0,
    2.5,
    1e308,
    -1e308,
    "",
    "x",
    "auto",
    "required",
    "none",
    "\u0000",
    "é\u202e漢字",
    "1",
    "true",
]


def garbage(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.55:
        return rng.choice(SCALARS + [None])
    if roll < 0.75:
        return [garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["type", "text", "name", "function", "content", "role", "url", "x", "input_schema"]
    return {rng.choice(keys): garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def values_for(rng: random.Random, extra: list[Any], count: int = 7) -> list[Any]:
    vals = list(extra) + [None, [], {}, "", garbage(rng, 1)]
    vals += rng.sample(SCALARS, count)
    vals += [garbage(rng) for _ in range(3)]
    return vals


MSG = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
ATOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}


@dataclass
class Case:
    id: str
    path: str
    body: bytes
    expect: bool | None  # True: 2xx, False: 4xx, None: anything but 5xx
    headers: list[tuple[bytes, bytes]] | None = None  # None: the valid key
    method: str = "POST"


def _dump(doc: Any) -> bytes:
    return orjson.dumps(doc)


OPENAI_FIELD_EXTRAS: dict[str, list[Any]] = {
    "model": ["m-ok", "m-anth", "M-OK", "m-ok ", "emb", "no-such-model", "a" * 300, "../m-ok"],
    "messages": ["hi", [], [[]], [None], [{"role": "user"}], MSG * 2, {"role": "user"}],
    "n": [1, 2, 0, -3, 1.0, "2", 129, 2**40],
    "max_tokens": [1, 20, MODEL_MAX_OUT, 0, -5, 20.0, "20", 2**31, 2**63 - 1],
    "max_completion_tokens": [1, 0, 20.5, "7", 2**63 - 1],
    "temperature": [0, 2, 0.7, -0.1, 2.01, 1e308, "0.5", True],
    "top_p": [0, 1, 0.9, 1.1, -1, "1"],
    "stream": [True, False, 1, "true", "yes", [True]],
    "stream_options": [{"include_usage": True}, {"include_usage": "yes"}, [], "usage", True],
    "response_format": [{"type": "json_object"}, {"type": 5}, "json", ["json_object"]],
    "tools": [
        [TOOL],
        {},
        [TOOL, 5],
        [{"type": "function"}],
        [{"type": "function", "function": "get_weather"}],
        [{"type": "function", "function": {"name": 7}}],
        [{"function": {"name": "f"}}],
        ["get_weather"],
        [[TOOL]],
        [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
    ],
    "tool_choice": [
        "auto",
        "none",
        "required",
        "any",
        5,
        [],
        {"type": "function"},
        {"type": "function", "function": "f"},
        {"type": "function", "function": {"name": 3}},
        {"function": {"name": "f"}},
        {"type": "function", "function": {"name": "get_weather"}},
    ],
    "stop": ["\n", ["a", "b"], 5, [1, 2], {"a": 1}, [None], True],
    "user": [5, {}],
    "seed": ["x", 1.5],
    "logit_bias": [[], "x"],
    "presence_penalty": ["x", 9],
    "parallel_tool_calls": ["x", 1],
    "metadata": [[], 5],
}

ANTHROPIC_FIELD_EXTRAS: dict[str, list[Any]] = {
    "model": ["m-ok", "m-anth", "claude-3-5-sonnet", "emb", "", "auto-nope"],
    "max_tokens": [1, 20, 0, -1, 20.0, "20", True, 2**63 - 1],
    "messages": ["hi", [], [None], [{"role": "system", "content": "x"}], {"role": "user"}],
    "system": ["be brief", [{"type": "text", "text": "be brief"}], 5, {"text": "x"}, [5], [{"type": "text"}], [[]]],
    "temperature": [0, 1, 0.5, 1.5, 2, 2.5, -1, "1"],
    "top_p": [0.5, 1.5, "x"],
    "top_k": [5, -1, "x"],
    "stream": [True, False, "true", 0],
    "stop_sequences": [["END"], "END", [5], 5, {}],
    "tools": [[ATOOL], {}, [5], [{"name": 5}], [{"input_schema": {}}], ["f"], [{"name": "f", "input_schema": 5}]],
    "tool_choice": [
        {"type": "auto"},
        {"type": "any"},
        {"type": "none"},
        {"type": "tool", "name": "get_weather"},
        {"type": "tool"},
        {"type": "tool", "name": 5},
        {"type": "bogus"},
        "auto",
        5,
        [],
    ],
    "metadata": [{"user_id": "u"}, 5, "x"],
}


def field_cases(rng: random.Random) -> list[Case]:
    cases = []
    for model in CHAT_MODELS:
        for name, extra in OPENAI_FIELD_EXTRAS.items():
            for i, v in enumerate(values_for(rng, extra)):
                body = {"model": model, "messages": MSG, "max_tokens": 20, name: v}
                if v is None and name in ("model", "messages"):
                    del body[name]
                if name in ("max_tokens", "max_completion_tokens") and name != "max_tokens":
                    del body["max_tokens"]
                cases.append(
                    Case(f"chat-{model}-{name}-{i}", CHAT, _dump(body), openai_field_valid(name, v, model))
                )
        for name, extra in ANTHROPIC_FIELD_EXTRAS.items():
            for i, v in enumerate(values_for(rng, extra, 5)):
                body = {"model": model, "max_tokens": 20, "messages": MSG, name: v}
                if v is None and name in ("model", "max_tokens", "messages"):
                    del body[name]
                valid = anthropic_field_valid(name, v, model)
                if name == "model" and v is None:
                    valid = False
                if name == "messages" and v is None:
                    valid = False
                cases.append(Case(f"msg-{model}-{name}-{i}", MESSAGES, _dump(body), valid))
    return cases


def embeddings_input_valid(v: Any) -> bool | None:
    if isinstance(v, str):
        return True if v else None
    if not isinstance(v, list) or not v:
        return False
    ok = all(
        isinstance(i, str) or _is_int(i) or (isinstance(i, list) and all(_is_int(t) for t in i))
        for i in v
    )
    return (None if "" in v or [] in v else True) if ok else False


def embeddings_cases(rng: random.Random) -> list[Case]:
    extra = ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]], [[1, "x"]], [None], [{"text": "a"}],
             [["a"]], [True], [1.5], "", [""], [[]], {"input": "x"}, 5]
    cases = []
    for i, v in enumerate(values_for(rng, extra, 5)):
        body = {"model": "emb", "input": v}
        cases.append(Case(f"emb-input-{i}", EMBEDDINGS, _dump(body), embeddings_input_valid(v)))
    for name in ("encoding_format", "dimensions", "user"):
        for i, v in enumerate(values_for(rng, [], 3)):
            body = {"model": "emb", "input": "x", name: v}
            cases.append(Case(f"emb-{name}-{i}", EMBEDDINGS, _dump(body), None))
    return cases


def content_cases(rng: random.Random) -> list[Case]:
    """Message-level garbage: roles, content, parts, tool calls."""
    cases = []
    openai_contents: list[tuple[Any, bool | None]] = [
        ("hi", True),
        ([{"type": "text", "text": "hi"}], True),
        (5, False),
        (1.5, False),
        (True, False),
        ({"text": "hi"}, False),
        ({"type": "text", "text": "hi"}, False),
        ([5], False),
        (["hi"], False),
        ([{"text": "hi"}], False),
        ([{"type": 5}], False),
        ([{"type": "text", "text": 5}], False),
        ([{"type": "text", "text": ["a"]}], False),
        ([{"type": "image_url", "image_url": "http://x/y.png"}], False),
        ([{"type": "image_url", "image_url": {"url": 5}}], False),
        ([{"type": "image_url"}], False),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}], None),
        ([[{"type": "text", "text": "hi"}]], False),
    ]
    for _ in range(8):
        openai_contents.append((garbage(rng), None))
    for model in CHAT_MODELS:
        for i, (content, valid) in enumerate(openai_contents):
            if valid is None and not isinstance(content, (str, list)) and content is not None:
                valid = False
            body = {"model": model, "messages": [{"role": "user", "content": content}]}
            cases.append(Case(f"chat-{model}-content-{i}", CHAT, _dump(body), valid))
        for i, role in enumerate(["robot", "", 5, None, "USER", "system ", ["user"], "tool"]):
            body = {"model": model, "messages": [{"role": role, "content": "hi"}]}
            cases.append(Case(f"chat-{model}-role-{i}", CHAT, _dump(body), None if role == "tool" else False))
        calls: list[tuple[Any, bool | None]] = [
            ([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}], True),
            ([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}], None),
            ({"id": "c1"}, False),
            ("call", False),
            ([5], False),
            ([{"id": "c1", "type": "function", "function": "f"}], False),
            ([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": 5}}], False),
            ([{"id": "c1", "type": "function"}], False),
        ]
        for i, (tc, valid) in enumerate(calls):
            msgs = [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": tc},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ]
            body = {"model": model, "messages": msgs, "tools": [TOOL]}
            cases.append(Case(f"chat-{model}-toolcalls-{i}", CHAT, _dump(body), valid))

        anth_contents: list[tuple[Any, bool | None]] = [
            ("hi", True),
            ([{"type": "text", "text": "hi"}], True),
            (5, False),
            (None, False),
            ({"type": "text", "text": "hi"}, False),
            ([5], False),
            (["hi"], False),
            ([{"text": "hi"}], False),
            ([{"type": "text", "text": 5}], False),
            ([{"type": "text"}], False),
            ([{"type": "image", "source": "http://x"}], False),
            ([{"type": "image", "source": {"type": "url", "url": 5}}], False),
            ([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}], None),
            ([{"type": "tool_result", "tool_use_id": "t1", "content": 5}], False),
            ([{"type": "tool_result", "tool_use_id": "t1", "content": [5, {"type": "text", "text": "x"}]}], None),
            ([{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}], None),
            ([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}], None),
            ([{"type": "tool_use", "id": "t1", "name": 5, "input": "x"}], None),
            ([{"type": "bogus"}], None),
        ]
        for _ in range(6):
            anth_contents.append((garbage(rng), None))
        for i, (content, valid) in enumerate(anth_contents):
            if valid is None and not isinstance(content, (str, list)):
                valid = False
            body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": content}]}
            cases.append(Case(f"msg-{model}-content-{i}", MESSAGES, _dump(body), valid))
        for i, role in enumerate(["system", "tool", "", 5, None, "User"]):
            body = {"model": model, "max_tokens": 20, "messages": [{"role": role, "content": "hi"}]}
            cases.append(Case(f"msg-{model}-role-{i}", MESSAGES, _dump(body), False))
    return cases


def raw_cases(rng: random.Random) -> list[Case]:
    """Bodies that are not (valid) JSON, and JSON corner cases only raw text can express."""
    valid = b'{"model":"m-ok","messages":[{"role":"user","content":"hi"}],"max_tokens":20'
    anth = b'{"model":"m-ok","max_tokens":20,"messages":[{"role":"user","content":"hi"}]'
    bodies: list[tuple[str, bytes, bool | None]] = [
        ("empty", b"", False),
        ("space", b"  \n", False),
        ("null", b"null", False),
        ("number", b"42", False),
        ("string", b'"hi"', False),
        ("array", b"[]", False),
        ("array-of-obj", b"[" + valid + b"}]", False),
        ("open", b"{", False),
        ("nan", valid + b',"temperature":NaN}', False),
        ("inf", valid + b',"temperature":Infinity}', False),
        ("-inf", valid + b',"temperature":-Infinity}', False),
        ("1e400", valid + b',"temperature":1e400}', False),
        ("huge-int", valid[: -len(b'"max_tokens":20')] + b'"max_tokens":18446744073709551616}', False),
        ("huger-int", valid[: -len(b'"max_tokens":20')] + b'"max_tokens":' + b"9" * 400 + b"}", False),
        ("neg-huge-int", valid + b',"n":-99999999999999999999999}', False),
        ("deep-array", b'{"model":"m-ok","messages":' + b"[" * 5000 + b"]" * 5000 + b"}", False),
        ("deep-object", b'{"a":' * 3000 + b"1" + b"}" * 3000, False),
        ("deep-content", valid[:-16] + b',"metadata":' + b"[" * 200 + b"]" * 200 + b',"max_tokens":20}', True),
        ("bad-utf8", valid.replace(b"hi", b"h\xff\xfei") + b"}", False),
        ("overlong-utf8", valid.replace(b"hi", b"\xc0\xaf") + b"}", False),
        ("lone-surrogate", valid.replace(b"hi", b"\\ud800") + b"}", False),
        ("bom", b"\xef\xbb\xbf" + valid + b"}", False),
        ("utf16", (valid + b"}").decode().encode("utf-16"), False),
        ("trailing", valid + b"} x", False),
        ("two-docs", valid + b"}" + valid + b"}", False),
        ("nul", valid + b"}\x00", False),
        ("form", b"model=m-ok&messages=hi", False),
        ("dup-keys-bad-last", valid + b',"model":5}', False),
        ("dup-keys-good-last", b'{"model":5,' + valid[1:] + b"}", True),
        ("dup-messages", valid + b',"messages":"hi"}', False),
        ("valid", valid + b"}", True),
        ("escaped-unicode", valid.replace(b"hi", b"\\u00e9\\u6f22") + b"}", True),
    ]
    full = valid + b"}"
    for cut in sorted(rng.sample(range(1, len(full) - 1), 10)):
        bodies.append((f"truncated-{cut}", full[:cut], False))
    cases = [Case(f"raw-chat-{name}", CHAT, body, exp) for name, body, exp in bodies]
    for name, body, exp in bodies:
        body = body.replace(valid, anth)
        if name == "huge-int":
            body = anth.replace(b'"max_tokens":20', b'"max_tokens":18446744073709551616') + b"}"
        elif name == "huger-int":
            body = anth.replace(b'"max_tokens":20', b'"max_tokens":' + b"9" * 400) + b"}"
        elif name == "deep-content":
            body = anth + b',"metadata":' + b"[" * 200 + b"]" * 200 + b"}"
            exp = None
        elif name == "neg-huge-int":  # no 'n' in the Messages API: ignored
            exp = None
        elif name == "dup-keys-good-last":
            body = b'{"model":5,' + anth[1:] + b"}"
        cases.append(Case(f"raw-msg-{name}", MESSAGES, body, exp))
    emb = b'{"model":"emb","input":"hello"'
    for name, body, exp in bodies[:27]:
        if name.startswith(("huge", "huger", "neg-huge", "deep-content", "dup")):
            continue
        cases.append(Case(f"raw-emb-{name}", EMBEDDINGS, body.replace(valid, emb), exp))
    # The content type is not what decides: JSON with another type is served, non-JSON is refused.
    for c, (ctype, body, exp) in enumerate([
        (b"text/plain", full, True),
        (b"application/x-www-form-urlencoded", b"model=m-ok", False),
        (b"multipart/form-data; boundary=x", b"--x\r\n\r\n--x--", False),
        (b"application/json; charset=latin-1", full, True),
    ]):
        for path, b in ((CHAT, body), (MESSAGES, body.replace(valid, anth))):
            cases.append(Case(f"ctype-{path}-{c}", path, b, exp, headers=[(b"content-type", ctype)]))
    return cases


def model_name_cases() -> list[Case]:
    """Unknown names and the auto variants; an auto request with a prompt the replay upstreams
    recorded is served."""
    recorded = next(iter(read_packaged())).prompt
    cases = []
    names: list[tuple[str, bool | None]] = [
        ("auto", None),
        ("auto-cheap", None),
        ("auto-best", None),
        ("AUTO", False),
        ("auto ", False),
        ("auto-nope", False),
        ("default", False),
        ("auto/m-ok", False),
        ("emb", False),
        ("m-unpriced", False),
    ]
    for name, exp in names:
        cases.append(Case(f"name-chat-{name}", CHAT, _dump({"model": name, "messages": MSG}), exp))
        cases.append(
            Case(f"name-msg-{name}", MESSAGES, _dump({"model": name, "max_tokens": 20, "messages": MSG}), exp)
        )
        emb = _dump({"model": name, "input": "x"})
        cases.append(Case(f"name-emb-{name}", EMBEDDINGS, emb, name == "emb"))
    for name in ("auto", "auto-cheap", "auto-best"):
        msgs = [{"role": "user", "content": recorded}]
        cases.append(Case(f"auto-chat-{name}", CHAT, _dump({"model": name, "messages": msgs}), True))
        cases.append(
            Case(f"auto-stream-{name}", CHAT, _dump({"model": name, "messages": msgs, "stream": True}), True)
        )
        cases.append(
            Case(f"auto-msg-{name}", MESSAGES, _dump({"model": name, "max_tokens": 300, "messages": msgs}), True)
        )
    return cases


def header_cases(key_placeholder: bytes = b"{KEY}") -> list[Case]:
    """Authorization schemes; ``{KEY}`` is replaced by the real key when the case runs."""
    auths: list[tuple[str, list[tuple[bytes, bytes]], bool]] = [
        ("none", [], False),
        ("empty", [(b"authorization", b"")], False),
        ("bearer-only", [(b"authorization", b"Bearer")], False),
        ("bearer-space", [(b"authorization", b"Bearer ")], False),
        ("basic", [(b"authorization", b"Basic " + key_placeholder)], False),
        ("token", [(b"authorization", b"Token " + key_placeholder)], False),
        ("wrong-key", [(b"authorization", b"Bearer sk-thr-nope")], False),
        ("admin-as-bad", [(b"authorization", b"Bearer " + ADMIN.encode() + b"x")], False),
        ("latin1", [(b"authorization", b"Bearer \xff\xfe\x80")], False),
        ("ctrl", [(b"authorization", b"Bearer \x01\x02")], False),
        ("long", [(b"authorization", b"Bearer " + b"k" * 10_000)], False),
        ("lower-bearer", [(b"authorization", b"bearer " + key_placeholder)], True),
        ("bearer-2-spaces", [(b"authorization", b"Bearer  " + key_placeholder)], True),
        ("x-api-key", [(b"x-api-key", key_placeholder)], True),
        ("x-api-key-bad", [(b"x-api-key", b"nope")], False),
        ("bad-auth-good-x-api-key", [(b"authorization", b"Bearer nope"), (b"x-api-key", key_placeholder)], False),
    ]
    cases = []
    bodies = {
        CHAT: _dump({"model": "m-ok", "messages": MSG}),
        MESSAGES: _dump({"model": "m-ok", "max_tokens": 20, "messages": MSG}),
        EMBEDDINGS: _dump({"model": "emb", "input": "x"}),
    }
    for name, headers, exp in auths:
        for path, body in bodies.items():
            cases.append(Case(f"auth-{path}-{name}", path, body, exp, headers=headers))
    return cases


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def mutate(rng: random.Random, doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(doc) if p]
        path = rng.choice(paths)
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        op = rng.random()
        if op < 0.2 and isinstance(parent, dict):
            del parent[last]
        elif op < 0.55:
            parent[last] = garbage(rng)
        elif op < 0.65:
            parent[last] = [parent[last]]
        elif op < 0.75:
            parent[last] = {"type": "text", "text": parent[last]}
        elif op < 0.85:
            parent[last] = str(parent[last]) if not isinstance(parent[last], str) else 12
        elif isinstance(parent[last], dict):
            parent[last][rng.choice(["type", "role", "x", "function", "name"])] = garbage(rng)
        elif isinstance(parent[last], list):
            parent[last].append(garbage(rng))
        else:
            parent[last] = None
    return doc


VALID_CHAT = [
    {"model": "m-ok", "messages": MSG, "max_tokens": 20},
    {"model": "m-anth", "messages": MSG, "max_tokens": 20, "stream": True, "stream_options": {"include_usage": True}},
    {
        "model": "m-anth",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": ["END"],
        "temperature": 0.5,
    },
]
VALID_MESSAGES = [
    {"model": "m-ok", "max_tokens": 20, "messages": MSG, "system": "be brief"},
    {
        "model": "m-anth",
        "max_tokens": 20,
        "stream": True,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
        ],
        "tools": [ATOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["END"],
    },
]
VALID_EMBEDDINGS = [{"model": "emb", "input": ["hello", "world"]}]


def mutation_cases(rng: random.Random, per_base: int = 40) -> list[Case]:
    cases = []
    for path, bases in ((CHAT, VALID_CHAT), (MESSAGES, VALID_MESSAGES), (EMBEDDINGS, VALID_EMBEDDINGS)):
        for b, base in enumerate(bases):
            cases.append(Case(f"valid-{path}-{b}", path, _dump(base), True))
            for i in range(per_base):
                cases.append(Case(f"mut-{path}-{b}-{i}", path, _dump(mutate(rng, base)), None))
    return cases


def feedback_cases(rng: random.Random) -> list[Case]:
    bodies: list[tuple[str, bytes, bool | None]] = [
        ("empty", b"", False),
        ("not-json", b"{", False),
        ("array", b"[]", False),
        ("nan-score", b'{"request_id":"{RID}","score":NaN}', False),
        ("inf-score", b'{"request_id":"{RID}","score":Infinity}', False),
        ("deep", b"[" * 100_000 + b"]" * 100_000, False),
        ("bad-utf8", b'{"request_id":"\xff","score":1}', False),
        ("unknown-id", b'{"request_id":"nope","score":1}', False),
        ("both", b'{"request_id":"{RID}","score":1,"thumbs":"up"}', False),
        ("score-str", b'{"request_id":"{RID}","score":"1"}', False),
        ("score-big", b'{"request_id":"{RID}","score":1e400}', False),
        ("thumbs-list", b'{"request_id":"{RID}","thumbs":["up"]}', False),
        ("comment-num", b'{"request_id":"{RID}","score":1,"comment":5}', False),
        ("extra", b'{"request_id":"{RID}","score":1,"x":1}', False),
        ("ok-score", b'{"request_id":"{RID}","score":0.5}', True),
        ("ok-thumbs", b'{"request_id":"{RID}","thumbs":"down","comment":"meh"}', True),
    ]
    for i in range(10):
        bodies.append((f"garbage-{i}", _dump({"request_id": "{RID}", rng.choice(["score", "thumbs", "comment"]): garbage(rng)}), None))
    return [Case(f"feedback-{name}", FEEDBACK, body, exp) for name, body, exp in bodies]


def misc_cases() -> list[Case]:
    return [
        Case("models-get", MODELS, b"", True, method="GET"),
        Case("models-post", MODELS, b"{}", False),
        Case("models-garbage-body", MODELS, b"\xff{", True, method="GET"),
        Case("chat-get", CHAT, b"", False, method="GET"),
        Case("messages-put", MESSAGES, b"{}", False, method="PUT"),
        Case("messages-count", MESSAGES + "/count_tokens", b"{}", False),
        Case("feedback-get", FEEDBACK, b"", False, method="GET"),
        Case("feedback-subpath", FEEDBACK + "/x", b"{}", False),
        Case("chat-query", CHAT + "?x=%ff&y", _dump({"model": "m-ok", "messages": MSG}), True),
        Case("chat-too-big", CHAT, b'{"model":"m-ok","messages":[{"role":"user","content":"' + b"x" * 250_000 + b'"}]}', False),
        Case("msg-too-big", MESSAGES, b"{" + b" " * 250_000 + b"}", False),
    ]


def all_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = (
        field_cases(rng)
        + content_cases(rng)
        + embeddings_cases(rng)
        + raw_cases(rng)
        + model_name_cases()
        + header_cases()
        + mutation_cases(rng)
        + feedback_cases(rng)
        + misc_cases()
    )
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


CASES = all_cases()


# -- checks ------------------------------------------------------------------------------------


def _fmt(path: str) -> str:
    return "anthropic" if path.startswith(MESSAGES) else "openai"


def check_error(case: Case, r: Reply) -> None:
    text = r.body.decode("utf-8", "replace")
    for marker in TRACE_MARKERS:
        assert marker not in text, f"internal detail in the error body: {text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    doc = orjson.loads(r.body)
    if _fmt(case.path) == "anthropic":
        assert set(doc) == {"type", "error"} and doc["type"] == "error", doc
        assert set(doc["error"]) == {"type", "message"}, doc
        assert doc["error"]["type"] in ANTHROPIC_ERROR_TYPES, doc
        message = doc["error"]["message"]
    else:
        if SPEC.is_file():  # OpenAI's own schema when present (it would skip the case otherwise)
            validate(doc, "ErrorResponse")
        err = doc["error"]
        assert {"message", "type", "code"} <= set(err) <= {"message", "type", "param", "code"}, doc
        assert isinstance(err["type"], str) and err["type"]
        message = err["message"]
    assert isinstance(message, str) and len(message) > 10, doc


def _sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    events: list[tuple[str | None, Any]] = []
    for block in body.split(b"\n\n"):
        kind, data = None, None
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                kind = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                payload = line[5:].strip()
                data = payload.decode() if payload == b"[DONE]" else orjson.loads(payload)
            elif line.startswith(b":"):
                events.append(("comment", line[1:].strip().decode()))
        if data is not None:
            events.append((kind, data))
    return events


def check_success(h: Harness, case: Case, r: Reply) -> None:
    """A served request is in the ledger, with the cost (and tokens) the client was told."""
    if case.path == MODELS:
        assert orjson.loads(r.body)["object"] == "list"
        return
    if case.path == FEEDBACK:
        assert orjson.loads(r.body)["object"] == "feedback"
        return
    rid = r.headers["x-request-id"]
    row = h.ledger(rid)
    assert row is not None, f"served request {rid} is not in the ledger"
    status, cost_nanos, prompt_tokens, completion_tokens, served, stream = row
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        events = _sse_events(r.body)
        errors = [d for k, d in events if k == "error" or (isinstance(d, dict) and "error" in d)]
        if errors:  # a stream that broke after the 200: recorded as failed, not as served
            assert status >= 500, (row, errors)
            return
        assert status == 200 and stream, row
        if _fmt(case.path) == "anthropic":
            assert events[-1][0] == "message_stop", events[-3:]
            usage = next(d["usage"] for k, d in events if k == "message_delta")
            told = usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0)
            assert (told, usage["output_tokens"]) == (prompt_tokens, completion_tokens), (usage, row)
            info = h.app.gw.models[served].info
            want = usd_to_nanos(price(info, Usage(prompt_tokens, completion_tokens)))
            assert cost_nanos == want, (row, want)
        else:
            assert events[-1] == (None, "[DONE]"), events[-3:]
            comment = next(d for k, d in events if k == "comment" and d.startswith("thrifty cost_usd="))
            reported = comment.split()[1].removeprefix("cost_usd=")
            assert cost_nanos == usd_to_nanos(reported), (row, comment)
        return
    assert status == 200 and not stream, row
    assert cost_nanos == usd_to_nanos(r.headers["x-thrifty-cost-usd"]), (row, r.headers)
    doc = orjson.loads(r.body)
    if _fmt(case.path) == "anthropic":
        assert doc["type"] == "message", doc
        told = doc["usage"]["input_tokens"] + doc["usage"]["cache_read_input_tokens"]
        assert (told, doc["usage"]["output_tokens"]) == (prompt_tokens, completion_tokens), (doc, row)
    else:
        assert doc["object"] in ("chat.completion", "list"), doc
        assert doc["usage"]["prompt_tokens"] == prompt_tokens, (doc, row)
    h.rated.append(rid)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fuzz(fuzz: Harness, case: Case) -> None:
    body = case.body
    if b"{RID}" in body:
        if not fuzz.rated:  # a served request to rate, in case this case runs alone
            r = fuzz.call("POST", CHAT, _dump({"model": "m-ok", "messages": MSG}))
            fuzz.rated.append(r.headers["x-request-id"])
        body = body.replace(b"{RID}", fuzz.rated[-1].encode())
    headers = None
    if case.headers is not None:
        headers = [(k, v.replace(b"{KEY}", fuzz.key.encode())) for k, v in case.headers]
        if not any(k in (b"authorization", b"x-api-key") for k, _ in headers) and not case.id.startswith("auth-"):
            headers.append((b"authorization", b"Bearer " + fuzz.key.encode()))
    hits = fuzz.hits()
    r = fuzz.call(case.method, case.path, body, headers)
    assert r.status < 500, f"{r.status}: {r.body[:400]!r}"
    if case.expect is True:
        assert 200 <= r.status < 300, f"valid request refused: {r.status} {r.body[:400]!r}"
    elif case.expect is False:
        assert 400 <= r.status < 500, f"invalid request not refused: {r.status} {r.body[:300]!r}"
    if r.status >= 400:
        check_error(case, r)
    else:
        check_success(fuzz, case, r)
    if fuzz.hits() != hits:  # it reached a (paid) upstream: it must be in the ledger
        rid = r.headers.get("x-request-id")
        assert rid and fuzz.ledger(rid) is not None, f"upstream called but no ledger record ({r.status})"


def test_cases_cover_the_brief() -> None:
    """The generator really produces the families it claims (so a refactor cannot empty it)."""
    ids = [c.id for c in CASES]
    assert len(CASES) > 500
    for prefix in ("chat-m-anth-tools", "msg-m-anth-system", "raw-chat-nan", "raw-msg-deep-array",
                   "auth-", "mut-", "name-chat-auto", "feedback-", "chat-m-ok-content"):
        assert any(i.startswith(prefix) for i in ids), prefix
    assert sum(c.expect is False for c in CASES) > 200 and sum(c.expect is True for c in CASES) > 50
