"""A fast local fake of an OpenAI-compatible (and Anthropic Messages) upstream, for tests and
benchmarks: it replaces hosted LLM providers, nothing else.

A raw asyncio protocol with httptools' parser and cached response bytes, so it serves tens of
thousands of requests a second on one core and is never the bottleneck of a gateway benchmark.
Behaviours (``mode``): ``ok``; ``error500`` (every request fails); ``flaky`` (the first
``fail_first`` requests fail with 500, then ok); ``hang`` (accepts and never answers, for
timeouts); ``break_stream`` (streams start, then the connection drops mid-answer); ``slow``
(answers after ``delay`` seconds); ``reset`` (does the work, counted in ``hits`` and billed in
``served``, then resets the connection unanswered: after ``ok_first`` answered requests, the
next ``fail_first``, or all with 0); ``rate_limited`` (the first ``fail_first`` requests, or
all with 0, get ``limit_status``, 429 by default, with ``Retry-After: <retry_after>``). ``hits`` counts model calls. With ``billing="body"`` it bills
like an adversarial provider, from what it was sent: every UTF-8 byte of every string in the
body (keys included; the top-level ``model`` value excepted) is a prompt token, and every image
part costs ``image_tokens`` more; ``served`` lists ``(model, prompt, completion)`` of each answer. With a server SSL context
(``ssl=``, or ``--certfile``/``--keyfile``) it serves HTTPS instead, for tests of TLS upstreams.

It also speaks OpenAI's batch API (``/files``, ``/batches`` with ``metadata``, list pages with
``limit``/``after``, output and error files), whatever the mode: :class:`BatchFaults` holds the
switches the batch tests use (hold batches open, end them ``failed``/``expired``, fail list
calls, hang on creating a batch before or after accepting it, answer uploads or batch creates
with an HTTP error or a dropped connection), and ``batch_runs`` counts each batch line the fake
ran (what a provider would charge).

Run one: ``python -m thrifty.testing.fake_upstream --port 9100 [--mode ok]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import socket
import ssl as ssl_module
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs

import httptools
import orjson

REPLY = "Hello! This is the fake upstream answering."
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
MODES = ("ok", "error500", "flaky", "hang", "break_stream", "slow", "reset", "rate_limited")


@dataclass
class Behaviour:
    mode: str = "ok"
    fail_first: int = 0
    delay: float = 0.0
    reply: str = REPLY
    billing: str = "fixed"  # fixed: USAGE for every answer; body: billed from the body sent
    image_tokens: int = 0  # with billing="body": prompt tokens per image part
    ok_first: int = 0  # reset: requests answered before the resets start
    retry_after: str = "1"  # rate_limited: the Retry-After value (seconds or an HTTP-date)
    limit_status: int = 429  # rate_limited: the status (429, or 503)


class HitGate(Behaviour):
    """A behaviour that switches on the fake's hit count: ``before`` for the first ``until``
    model calls, ``after`` for later ones (set ``until`` from the test to move the switch)."""

    def __init__(self, state: FakeState, until: int, before: str, after: str) -> None:
        super().__init__()
        self.state, self.until, self.before, self.after = state, until, before, after

    @property  # type: ignore[override]
    def mode(self) -> str:
        return self.before if self.state.hits <= self.until else self.after

    @mode.setter
    def mode(self, value: str) -> None:  # the dataclass's __init__ sets it; the gate decides
        pass


@dataclass
class BatchFaults:
    """Switches of the fake's batch API (set from the test's thread; read per request)."""

    hold: bool = False  # batches stay in_progress (until hold is cleared)
    end: str = "completed"  # how a batch ends: completed | failed | expired
    complete_lines: int | None = None  # with end=expired: how many lines ran before it expired
    fail_list: int = 0  # this many GET /batches list calls fail with 500
    hang_create: str | None = None  # "before": POST /batches hangs unanswered, no batch made;
    # "after": the batch is made, then the call hangs unanswered (the client never learns its id)
    accepted: threading.Event = field(default_factory=threading.Event)  # set on a hung create
    uploaded: threading.Event = field(default_factory=threading.Event)  # set on each upload
    # The next POST /files (upload) and POST /batches (create) calls fail, one status taken per
    # call: an HTTP status (answered with OpenAI's error body carrying ``refusal``, nothing
    # made), or 0 (the connection is dropped unanswered, nothing made).
    fail_upload: list[int] = field(default_factory=list)
    fail_create: list[int] = field(default_factory=list)
    refusal: str = "the fake provider refuses this batch"
    create_calls: list[float] = field(default_factory=list)  # when each POST /batches came


def _refuse(t: asyncio.Transport, status: int, message: str) -> None:
    """Fail a batch API call: ``status`` with OpenAI's error body, or 0: drop the connection."""
    if status == 0:
        t.close()
        return
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": f"fake_{status}"}}
    t.write(_response(status, orjson.dumps(body)))


def _response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, reason, ctype, len(body))
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chat_answer(model: str, reply: str, usage: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage or USAGE,
    }


def _messages_answer(model: str, reply: str, usage: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage["prompt_tokens"] if usage else 12,
            "output_tokens": 9,
        },
    }


#: The non-streamed answer of each API the fake serves, by kind: (model, reply, usage) -> document.
ANSWERS: dict[str, Callable[[str, str, dict[str, int] | None], dict[str, Any]]] = {
    "chat": _chat_answer,
    "messages": _messages_answer,
}


class FakeState:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.hits = 0
        self.cache: dict[tuple[str, str], bytes] = {}
        self.transports: set[asyncio.Transport] = set()
        self.connections = 0
        self.last_body: dict[str, Any] | None = None
        self.faults = BatchFaults()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object, in creation order
        self.batch_runs: list[str] = []  # custom ids of batch lines the fake ran (charged)
        self.deleted_files: list[str] = []
        self.ids = itertools.count(1)
        self.served: list[tuple[str, int, int]] = []  # (model, prompt, completion) per answer

    def bill(self, doc: dict[str, Any], *, embeddings: bool = False) -> dict[str, int] | None:
        """The usage of an answer to ``doc`` with ``billing="body"`` (recorded in ``served``);
        None with fixed billing (the cached answers carry USAGE)."""
        if self.behaviour.billing != "body":
            return None
        prompt = _billed_tokens(doc, self.behaviour.image_tokens)
        completion = 0 if embeddings else USAGE["completion_tokens"]
        self.served.append((str(doc.get("model", "fake-model")), prompt, completion))
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def answer(self, kind: str, model: str, usage: dict[str, int] | None = None) -> bytes:
        """A 200 carrying the ``kind`` answer (:data:`ANSWERS`), made once per ``kind`` and
        ``model`` and kept; made afresh for an answer billed with the request's own ``usage``."""
        if usage is None and (kind, model) in self.cache:
            return self.cache[kind, model]
        body = _response(200, orjson.dumps(ANSWERS[kind](model, self.behaviour.reply, usage)))
        if usage is None:
            self.cache[kind, model] = body
        return body

    def chat_stream(
        self, model: str, include_usage: bool, usage: dict[str, int] | None = None
    ) -> list[bytes]:
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        words = self.behaviour.reply.split(" ")
        pieces = [{"role": "assistant", "content": ""}] + [
            {"content": w + (" " if i < len(words) - 1 else "")} for i, w in enumerate(words)
        ]
        events = [
            {**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
            for d in pieces
        ]
        events.append(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            }
        )
        if include_usage:
            events.append({**base, "choices": [], "usage": usage or USAGE})
        return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]

    def messages_stream(self, model: str, usage: dict[str, int] | None = None) -> list[bytes]:
        def ev(kind: str, data: dict[str, Any]) -> bytes:
            return (
                b"event: "
                + kind.encode()
                + b"\ndata: "
                + orjson.dumps({"type": kind, **data})
                + b"\n\n"
            )

        out = [
            ev(
                "message_start",
                {
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": usage["prompt_tokens"] if usage else 12,
                            "output_tokens": 1,
                        },
                    }
                },
            ),
            ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ]
        for w in self.behaviour.reply.split(" "):
            out.append(
                ev(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": w + " "}},
                )
            )
        out += [
            ev("content_block_stop", {"index": 0}),
            ev(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 9},
                },
            ),
            ev("message_stop", {}),
        ]
        return out


def _billed_tokens(doc: dict[str, Any], image_tokens: int) -> int:
    """Every UTF-8 byte of every string in ``doc`` (keys too), but the top-level model name,
    plus ``image_tokens`` per image part (OpenAI ``image_url`` or Anthropic ``image``)."""
    total = 0
    stack: list[Any] = [v for k, v in doc.items() if k != "model"]
    total += sum(len(k.encode()) for k in doc)
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v.encode("utf-8", "surrogatepass"))
        elif isinstance(v, dict):
            if v.get("type") in ("image_url", "image", "input_image"):
                total += image_tokens
            for k, item in v.items():
                total += len(k.encode("utf-8", "surrogatepass"))
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
    return total


# -- reasoning-model parameter rules (gateway capability tests) --------------------------------
# Kept in one block: ``FakeState.reasoning_models`` (empty by default) names models that refuse
# what OpenAI's reasoning models refuse, with OpenAI's status and error body: ``max_tokens``
# (use ``max_completion_tokens``) and non-default sampling parameters.

FakeState.reasoning_models = frozenset()  # type: ignore[attr-defined]  (set per instance)
_REASONING_DEFAULTS = {
    "temperature": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": None,
}


def _openai_error(message: str, param: str, code: str) -> bytes:
    return _response(
        400,
        orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": param,
                    "code": code,
                }
            }
        ),
    )


def _reasoning_refusal(
    t: asyncio.Transport, st: FakeState, path: bytes, doc: dict[str, Any], model: str
) -> bool:
    """Answer a 400 (and return True) when ``model`` is a reasoning model and ``doc`` breaks
    its parameter rules."""
    if model not in st.reasoning_models or not path.endswith(b"/chat/completions"):  # type: ignore[attr-defined]
        return False
    if doc.get("max_tokens") is not None:
        t.write(
            _openai_error(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        )
        return True
    for key, default in _REASONING_DEFAULTS.items():
        value = doc.get(key)
        if value is not None and value != default:
            t.write(
                _openai_error(
                    f"Unsupported value: '{key}' does not support {value} with this model. "
                    f"Only the default ({default}) value is supported.",
                    key,
                    "unsupported_value",
                )
            )
            return True
    return False


# -- end of the reasoning-model block ---------------------------------------------------------


class FakeProtocol(asyncio.Protocol):
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.transports.add(self.transport)  # type: ignore[arg-type]
        self.state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.transports.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.write(_response(400, b'{"error":{"message":"bad request"}}'))
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw = b"".join(self.body)
        self.body = []
        url, self.url = self.url, b""
        method = self.parser.get_method()
        asyncio.get_running_loop().call_soon(
            self.respond, method, url, raw
        ) if self.state.behaviour.mode in ("slow", "hang") else self.respond(method, url, raw)

    def respond(self, method: bytes, url: bytes, raw: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        st = self.state
        b = st.behaviour
        path = url.split(b"?", 1)[0]
        if b"/files" in path or b"/batches" in path:
            self._batch_api(t, method, path, url.partition(b"?")[2], raw)
            return
        if method == b"GET" and path.endswith(b"/models"):
            t.write(
                _response(
                    200,
                    b'{"object":"list","data":[{"id":"fake-model","object":"model",'
                    b'"created":1700000000,"owned_by":"fake"}]}',
                )
            )
            return
        if method != b"POST":
            t.write(_response(404, b'{"error":{"message":"not found"}}'))
            return
        st.hits += 1
        if b.mode == "hang":
            return
        if b.mode == "error500" or (b.mode == "flaky" and st.hits <= b.fail_first):
            t.write(
                _response(
                    500, b'{"error":{"message":"fake upstream failure","type":"server_error"}}'
                )
            )
            return
        if b.mode == "reset" and st.hits > b.ok_first and (
            not b.fail_first or st.hits <= b.ok_first + b.fail_first
        ):
            self._work_then_reset(t, raw)
            return
        if b.mode == "rate_limited" and (not b.fail_first or st.hits <= b.fail_first):
            body = b'{"error":{"message":"rate limited","type":"rate_limit_error"}}'
            head = b"HTTP/1.1 %d Too Many Requests\r\nretry-after: %s\r\n" % (
                b.limit_status,
                b.retry_after.encode(),
            )
            t.write(head + _response(b.limit_status, body).split(b"\r\n", 1)[1])
            return
        if b.mode == "slow" and b.delay:
            asyncio.get_running_loop().call_later(b.delay, self._answer, t, path, raw)
            return
        self._answer(t, path, raw)

    def _work_then_reset(self, t: asyncio.Transport, raw: bytes) -> None:
        """The work is done (and billed, with ``billing="body"``), then the connection is reset
        (RST) before any byte of the answer: what a crashing upstream or middlebox leaves."""
        try:
            self.state.bill(orjson.loads(raw) if raw else {})
        except orjson.JSONDecodeError:
            pass
        sock = t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()

    # -- OpenAI's batch API -------------------------------------------------------------

    def _batch_api(self, t: asyncio.Transport, method: bytes, path: bytes, query: bytes, raw: bytes) -> None:
        st, faults = self.state, self.state.faults
        parts = path.decode().rstrip("/").split("/")
        i = max(n for n, p in enumerate(parts) if p in ("files", "batches"))
        kind, rest = parts[i], parts[i + 1 :]
        q = {k: v[0] for k, v in parse_qs(query.decode()).items()}

        def ok(doc: Any) -> None:
            t.write(_response(200, orjson.dumps(doc)))

        def not_found() -> None:
            t.write(_response(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}'))

        if kind == "files":
            if method == b"POST" and not rest and faults.fail_upload:
                _refuse(t, faults.fail_upload.pop(0), faults.refusal)
                return
            if method == b"POST" and not rest:
                fields = _multipart(self.headers.get(b"content-type", b""), raw)
                filename, content = fields.get("file", ("", b""))
                fid = f"file-fake{next(st.ids)}"
                st.files[fid] = {
                    "id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                    "filename": filename, "purpose": fields.get("purpose", ("", b""))[1].decode(),
                    "content": content,
                }
                faults.uploaded.set()
                ok({k: v for k, v in st.files[fid].items() if k != "content"})
            elif method == b"GET" and not rest:
                data = [{k: v for k, v in f.items() if k != "content"} for f in st.files.values()]
                if q.get("purpose"):
                    data = [f for f in data if f["purpose"] == q["purpose"]]
                ok({"object": "list", "data": data[::-1], "has_more": False})
            elif rest and rest[0] in st.files:
                f = st.files[rest[0]]
                if method == b"DELETE":
                    del st.files[rest[0]]
                    st.deleted_files.append(rest[0])
                    ok({"id": rest[0], "object": "file", "deleted": True})
                elif len(rest) > 1 and rest[1] == "content":
                    t.write(_response(200, f["content"], b"application/octet-stream"))
                else:
                    ok({k: v for k, v in f.items() if k != "content"})
            else:
                not_found()
            return
        if method == b"POST" and not rest:
            faults.create_calls.append(time.monotonic())
            if faults.fail_create:
                _refuse(t, faults.fail_create.pop(0), faults.refusal)
                return
            if faults.hang_create == "before":
                faults.accepted.set()
                return  # never answered, nothing made
            try:
                doc = orjson.loads(raw)
                content = st.files[doc["input_file_id"]]["content"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                t.write(_response(400, b'{"error":{"message":"bad batch","type":"invalid_request_error"}}'))
                return
            now = int(time.time())
            bid = f"batch_fake{next(st.ids)}"
            st.batches[bid] = {
                "id": bid, "object": "batch", "endpoint": doc.get("endpoint"), "errors": None,
                "input_file_id": doc["input_file_id"], "completion_window": "24h",
                "status": "in_progress", "output_file_id": None, "error_file_id": None,
                "created_at": now, "in_progress_at": now, "expires_at": now + 24 * 3600,
                "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": len(content.splitlines()), "completed": 0, "failed": 0},
                "metadata": doc.get("metadata"),
                "_lines": [orjson.loads(x) for x in content.splitlines() if x.strip()],
            }
            if faults.hang_create == "after":
                faults.accepted.set()
                return  # made, but the client never learns its id
            ok(self._batch_obj(st.batches[bid]))
        elif method == b"GET" and not rest:
            if faults.fail_list > 0:
                faults.fail_list -= 1
                t.write(_response(500, b'{"error":{"message":"list failed","type":"server_error"}}'))
                return
            ids = list(st.batches)[::-1]  # newest first
            if q.get("after") in st.batches:
                ids = ids[ids.index(q["after"]) + 1 :]
            limit = max(1, min(100, int(q.get("limit", "20"))))
            page = [self._batch_obj(self._advance(st.batches[b])) for b in ids[:limit]]
            ok({
                "object": "list", "data": page, "has_more": len(ids) > limit,
                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
            })
        elif method == b"GET" and len(rest) == 1 and rest[0] in st.batches:
            ok(self._batch_obj(self._advance(st.batches[rest[0]])))
        else:
            not_found()

    @staticmethod
    def _batch_obj(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run a batch that is not held: its lines answered (and counted in ``batch_runs``),
        then ended as ``faults.end`` says."""
        st, faults = self.state, self.state.faults
        if batch["status"] != "in_progress" or faults.hold:
            return batch
        lines = batch["_lines"]
        ran = lines if faults.end == "completed" else lines[: faults.complete_lines or 0]
        out = []
        for line in ran:
            st.batch_runs.append(line["custom_id"])
            body = orjson.loads(st.answer("chat", str(line["body"].get("model", "fake-model"))).split(b"\r\n\r\n", 1)[1])
            out.append(orjson.dumps({
                "id": f"batch_req_{next(st.ids)}", "custom_id": line["custom_id"],
                "response": {"status_code": 200, "request_id": line["custom_id"], "body": body},
                "error": None,
            }))
        now = int(time.time())
        if out:
            fid = f"file-fake{next(st.ids)}"
            content = b"\n".join(out) + b"\n"
            st.files[fid] = {
                "id": fid, "object": "file", "bytes": len(content), "created_at": now,
                "filename": "batch_output.jsonl", "purpose": "batch_output", "content": content,
            }
            batch["output_file_id"] = fid
        batch["status"] = faults.end
        batch[{"completed": "completed_at", "failed": "failed_at", "expired": "expired_at"}[faults.end]] = now
        batch["request_counts"] = {"total": len(lines), "completed": len(ran), "failed": 0}
        return batch

    def _answer(self, t: asyncio.Transport, path: bytes, raw: bytes) -> None:
        if t.is_closing():
            return
        st = self.state
        try:
            doc = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            t.write(_response(400, b'{"error":{"message":"invalid JSON"}}'))
            return
        st.last_body = doc
        model = str(doc.get("model", "fake-model"))
        if st.reasoning_models and _reasoning_refusal(t, st, path, doc, model):
            return
        usage = st.bill(doc, embeddings=path.endswith(b"/embeddings"))
        if path.endswith(b"/embeddings"):
            n = len(doc["input"]) if isinstance(doc.get("input"), list) else 1
            billed = usage["prompt_tokens"] if usage else 5 * n
            t.write(
                _response(
                    200,
                    orjson.dumps(
                        {
                            "object": "list",
                            "model": model,
                            "data": [
                                {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                for i in range(n)
                            ],
                            "usage": {"prompt_tokens": billed, "total_tokens": billed},
                        }
                    ),
                )
            )
            return
        anthropic = path.endswith(b"/messages")
        if not doc.get("stream"):
            t.write(st.answer("messages" if anthropic else "chat", model, usage))
            return
        events = (
            st.messages_stream(model, usage)
            if anthropic
            else st.chat_stream(
                model, bool((doc.get("stream_options") or {}).get("include_usage")), usage
            )
        )
        t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if st.behaviour.mode == "break_stream":
            for e in events[:3]:
                t.write(_chunk(e))
            t.close()  # mid-answer: no terminating chunk
            return
        t.write(b"".join(_chunk(e) for e in events) + b"0\r\n\r\n")


def _multipart(ctype: bytes, raw: bytes) -> dict[str, tuple[str, bytes]]:
    """``name -> (filename, content)`` of a multipart/form-data body (enough for uploads)."""
    m = re.search(rb'boundary="?([^";]+)"?', ctype)
    if not m:
        return {}
    out: dict[str, tuple[str, bytes]] = {}
    for part in raw.split(b"--" + m.group(1)):
        head, sep, body = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if not sep or not name:
            continue
        filename = re.search(rb'filename="([^"]*)"', head)
        out[name.group(1).decode()] = (
            filename.group(1).decode() if filename else "",
            body[:-2] if body.endswith(b"\r\n") else body,
        )
    return out


class FakeUpstream:
    """A fake upstream on 127.0.0.1 in a background thread (for tests): ``with FakeUpstream() as f:``."""

    def __init__(
        self,
        mode: str = "ok",
        *,
        port: int = 0,
        fail_first: int = 0,
        delay: float = 0.0,
        reply: str = REPLY,
        ssl: ssl_module.SSLContext | None = None,
        host_name: str = "127.0.0.1",
        billing: str = "fixed",
        image_tokens: int = 0,
        ok_first: int = 0,
        retry_after: str = "1",
        limit_status: int = 429,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if billing not in ("fixed", "body"):
            raise ValueError("billing must be 'fixed' or 'body'")
        self.state = FakeState(
            Behaviour(
                mode, fail_first, delay, reply, billing, image_tokens, ok_first, retry_after,
                limit_status,
            )
        )
        self.port = port
        self.ssl = ssl  # serve HTTPS with this server context
        self.host_name = host_name  # the host in base_url (it listens on 127.0.0.1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.AbstractServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def hits(self) -> int:
        return self.state.hits

    @property
    def served(self) -> list[tuple[str, int, int]]:
        """``(model, prompt tokens, completion tokens)`` of each answer (``billing="body"``)."""
        return self.state.served

    @property
    def faults(self) -> BatchFaults:
        """The batch API's switches (see :class:`BatchFaults`)."""
        return self.state.faults

    @property
    def origin(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host_name}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    @property
    def connections(self) -> int:
        """Connections accepted so far (keep-alive reuse keeps this low)."""
        return self.state.connections

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.server = self.loop.run_until_complete(
                self.loop.create_server(
                    lambda: FakeProtocol(self.state), "127.0.0.1", self.port, ssl=self.ssl
                )
            )
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.server.close()
            self.loop.run_until_complete(self.server.wait_closed())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
        self.thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Like a server process exiting: every open connection is closed, then the port."""
        if self.loop is not None and self.thread is not None:

            def close_all() -> None:
                for t in list(self.state.transports):
                    t.close()
                self.loop.call_soon(self.loop.stop)  # type: ignore[union-attr]

            self.loop.call_soon_threadsafe(close_all)
            self.thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(
    host: str, port: int, behaviour: Behaviour, ssl: ssl_module.SSLContext | None = None
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FakeProtocol(FakeState(behaviour)), host, port, backlog=4096, ssl=ssl
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Fake OpenAI-compatible upstream for tests and benchmarks."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--mode", default="ok", choices=MODES)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--keyfile", help="the certificate's private key (default: in --certfile)")
    args = p.parse_args(argv)
    ctx = None
    if args.certfile:
        ctx = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.certfile, args.keyfile)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        serve_forever(args.host, args.port, Behaviour(args.mode, args.fail_first, args.delay), ctx)
    )


if __name__ == "__main__":
    main()
