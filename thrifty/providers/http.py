"""A lean pooled HTTP/1.1 client for calling upstreams: keep-alive connections, one request at a
time each, httptools (llhttp) parsing, one write per request, timers instead of tasks.

Why not aiohttp or httpx: measured on the benchmark machine, aiohttp's client costs ~150 us of
CPU per call and httpx several times that, more than the whole budget the gateway has per
request; this client costs a fraction of it. It does only what upstream calls need: POST/GET
with a body, fixed headers, plain or TLS, chunked or sized responses, streamed bodies.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import AsyncIterator
from urllib.parse import urlsplit

import httptools


class HTTPError(Exception):
    """Connection failed or was lost (``reused``: on a pooled connection, before any response byte)."""

    def __init__(self, message: str, *, reused: bool = False) -> None:
        super().__init__(message)
        self.reused = reused


class HTTPTimeout(HTTPError):
    pass


class _Conn(asyncio.Protocol):
    __slots__ = (
        "transport",
        "parser",
        "loop",
        "status",
        "body",
        "done",
        "headers_done",
        "closed",
        "got_bytes",
        "complete",
        "chunks",
        "waiter",
        "timer",
        "deadline",
        "idle",
        "reused",
        "keep_alive",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body: list[bytes] = []
        self.chunks: collections.deque[bytes] | None = None
        self.complete = False
        self.keep_alive = (
            False  # read at message end: httptools forgets it once the message is done
        )
        self.got_bytes = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.headers_done: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: asyncio.TimerHandle | None = None  # streams: the total time limit
        self.idle = 0.0

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPError(f"invalid HTTP response: {exc}"))
            self.close()
        if (
            self.chunks is not None and self.timer is not None and not self.complete
        ):  # streams: idle timer
            self.timer.cancel()
            self.timer = self.loop.call_later(self.idle, self.on_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(
                HTTPError(
                    f"connection lost ({exc or 'closed by peer'})",
                    reused=self.reused and not self.got_bytes,
                )
            )

    # parser callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.chunks is not None:
            self.chunks.append(body)
            self._wake()
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.timer is not None:
            self.timer.cancel()
        if self.deadline is not None:
            self.deadline.cancel()
        if not self.done.done():
            self.done.set_result(None)
        self._wake()

    # helpers
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        for fut in (self.done, self.headers_done, self.waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        # nobody may await ``done`` in streaming mode: mark the exception retrieved
        if self.done.done() and not self.done.cancelled():
            self.done.exception()

    def on_timeout(self) -> None:
        self._fail(HTTPTimeout("upstream timed out"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.deadline is not None:
            self.deadline.cancel()
        if self.transport is not None:
            self.transport.close()


class HTTPPool:
    """Keep-alive connections to one origin (``base_url``'s scheme, host and port)."""

    def __init__(self, base_url: str, headers: dict[str, str], *, max_idle: int = 256) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "localhost"
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        host_header = self.host if url.port is None else f"{self.host}:{url.port}"
        lines = [f"Host: {host_header}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.head_tail = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.idle: list[_Conn] = []
        self.max_idle = max_idle
        self.ssl_context = ssl.create_default_context() if self.tls else None

    async def _connect(self, timeout: float) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.tls else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise HTTPTimeout(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise HTTPError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        return conn

    def _acquire_idle(self) -> _Conn | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn._reset()
                conn.reused = True
                return conn
        return None

    def _release(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        if conn.complete and not conn.closed and conn.keep_alive and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def _request_bytes(self, method: str, path: str, body: bytes) -> bytes:
        return (
            b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n"
            % (method.encode(), (self.prefix + path).encode(), self.head_tail, len(body))
        ) + body

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        connect: float,
        idle: float,
        stream: bool,
        total: float | None = None,
    ) -> _Conn:
        data = self._request_bytes(method, path, body)
        for _ in range(
            2
        ):  # a pooled connection the server closed meanwhile: retry once, on a new one
            conn = self._acquire_idle() or await self._connect(connect)
            conn.idle = idle
            if stream:
                conn.chunks = collections.deque()
                conn.headers_done = conn.loop.create_future()
            conn.timer = conn.loop.call_later(idle, conn.on_timeout)
            if total is not None:
                conn.deadline = conn.loop.call_later(total, conn.on_timeout)
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                if stream:
                    await conn.headers_done  # type: ignore[misc]
                else:
                    await conn.done
                return conn
            except HTTPError as exc:
                conn.close()
                if not exc.reused:
                    raise
        raise HTTPError("connection lost")

    async def request(
        self, method: str, path: str, body: bytes, *, connect: float, timeout: float
    ) -> tuple[int, bytes]:
        """(status, body); ``timeout`` bounds the wait for the whole response."""
        conn = await self._send(method, path, body, connect, timeout, stream=False)
        status, data = conn.status, b"".join(conn.body)
        self._release(conn)
        return status, data

    async def stream(
        self, method: str, path: str, body: bytes, *, connect: float, idle: float, total: float
    ) -> tuple[int, AsyncIterator[bytes]]:
        """(status, body chunks); ``idle`` bounds the wait for headers and between chunks, ``total``
        the whole response."""
        conn = await self._send(method, path, body, connect, idle, stream=True, total=total)

        async def chunks() -> AsyncIterator[bytes]:
            queue = conn.chunks
            assert queue is not None
            try:
                while True:
                    while queue:
                        yield queue.popleft()
                    if conn.complete:
                        return
                    conn.waiter = conn.loop.create_future()
                    await conn.waiter
            finally:
                if conn.complete:
                    self._release(conn)
                else:
                    conn.close()

        return conn.status, chunks()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def line_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The complete lines (without newlines) each network read brings, across read boundaries:
    one batch per read, so the gateway can forward in one write whatever arrived in one read."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if b"\n" not in buf:
            continue
        *lines, buf = buf.split(b"\n")
        yield [line.rstrip(b"\r") for line in lines]
    if buf:
        yield [buf]
