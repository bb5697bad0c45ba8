"""A fast local fake of an OpenAI-compatible (and Anthropic Messages) upstream, for tests and
benchmarks: it replaces hosted LLM providers, nothing else.

A raw asyncio protocol with httptools' parser and cached response bytes, so it serves tens of
thousands of requests a second on one core and is never the bottleneck of a gateway benchmark.
Behaviours (``mode``): ``ok``; ``error500`` (every request fails); ``flaky`` (the first
``fail_first`` requests fail with 500, then ok); ``hang`` (accepts and never answers, for
timeouts); ``break_stream`` (streams start, then the connection drops mid-answer); ``slow``
(answers after ``delay`` seconds). ``hits`` counts model calls. With a server SSL context
(``ssl=``, or ``--certfile``/``--keyfile``) it serves HTTPS instead, for tests of TLS upstreams.

Run one: ``python -m thrifty.providers.fake_upstream --port 9100 [--mode ok]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl as ssl_module
import threading
import time
from dataclasses import dataclass
from typing import Any, Self

import httptools
import orjson

REPLY = "Hello! This is the fake upstream answering."
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
MODES = ("ok", "error500", "flaky", "hang", "break_stream", "slow")


@dataclass
class Behaviour:
    mode: str = "ok"
    fail_first: int = 0
    delay: float = 0.0
    reply: str = REPLY


def _response(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, reason, ctype, len(body))
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeState:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.hits = 0
        self.cache: dict[tuple[str, str], bytes] = {}
        self.transports: set[asyncio.Transport] = set()
        self.connections = 0
        self.last_body: dict[str, Any] | None = None

    def chat_body(self, model: str) -> bytes:
        key = ("chat", model)
        if key not in self.cache:
            self.cache[key] = _response(
                200,
                orjson.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": self.behaviour.reply,
                                    "refusal": None,
                                },
                                "logprobs": None,
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": USAGE,
                    }
                ),
            )
        return self.cache[key]

    def messages_body(self, model: str) -> bytes:
        key = ("messages", model)
        if key not in self.cache:
            self.cache[key] = _response(
                200,
                orjson.dumps(
                    {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [{"type": "text", "text": self.behaviour.reply}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 12, "output_tokens": 9},
                    }
                ),
            )
        return self.cache[key]

    def chat_stream(self, model: str, include_usage: bool) -> list[bytes]:
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
            events.append({**base, "choices": [], "usage": USAGE})
        return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]

    def messages_stream(self, model: str) -> list[bytes]:
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
                        "usage": {"input_tokens": 12, "output_tokens": 1},
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


class FakeProtocol(asyncio.Protocol):
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

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
        if b.mode == "slow" and b.delay:
            asyncio.get_running_loop().call_later(b.delay, self._answer, t, path, raw)
            return
        self._answer(t, path, raw)

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
        if path.endswith(b"/embeddings"):
            n = len(doc["input"]) if isinstance(doc.get("input"), list) else 1
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
                            "usage": {"prompt_tokens": 5 * n, "total_tokens": 5 * n},
                        }
                    ),
                )
            )
            return
        anthropic = path.endswith(b"/messages")
        if not doc.get("stream"):
            t.write(st.messages_body(model) if anthropic else st.chat_body(model))
            return
        events = (
            st.messages_stream(model)
            if anthropic
            else st.chat_stream(model, bool((doc.get("stream_options") or {}).get("include_usage")))
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
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.state = FakeState(Behaviour(mode, fail_first, delay, reply))
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
