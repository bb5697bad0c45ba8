"""A lean pooled HTTP/1.1 client for calling upstreams: keep-alive connections, one request at a
time each, httptools (llhttp) parsing, one write per request, timers instead of tasks.

Why not aiohttp or httpx: measured on the benchmark machine, aiohttp's client costs ~150 us of
CPU per call and httpx several times that, more than the whole budget the gateway has per
request; this client costs a fraction of it. It does only what upstream calls need: POST/GET
with a body, fixed headers, plain or TLS, chunked or sized responses, streamed bodies, and the
response head kept as received (headers parsed only when asked: :mod:`transport`).

A request is written once. A pooled connection found dead before the write is replaced
silently; after the write, a lost connection or a timeout is an :class:`HTTPError` with
``sent`` set, because the upstream may have done (and will bill) the work: whether to try
again, and what to charge, is the gateway's decision (a counted retry), never this pool's.

TLS verifies the chain and the hostname, always: against ``ca_file`` when given (a PEM bundle,
or a hashed directory, that replaces the system store), else OpenSSL's default store, which
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` override as for Python's own default context.

Proxies: ``HTTPS_PROXY`` (https upstreams) and ``HTTP_PROXY`` (plain http ones), lowercase
names first, unless ``NO_PROXY`` matches the upstream (see :func:`bypass_proxy`); a pool's
``proxy`` argument overrides the environment (``False`` or ``""``: never). Only ``http://``
proxies: an https upstream goes through a CONNECT tunnel (TLS to the upstream inside it, SNI
and verification for the upstream's name), a plain one as absolute-form requests on keep-alive
connections to the proxy. Credentials in the proxy URL are sent as ``Proxy-Authorization:
Basic``. All of this is settled when a connection opens: a request on a pooled connection costs
the same with or without it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

from thrifty.providers.config import ProviderConfig
from thrifty.providers.transport import Head, Response, StreamResponse


class HTTPError(Exception):
    """No (complete) response: the connection failed, was lost or timed out. ``sent``: the
    request was written, so the upstream may have received it and done (and billed) the work;
    False only when it provably never left (no connection, or a proxy or TLS failure)."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class HTTPTimeout(HTTPError):
    pass


log = logging.getLogger("thrifty.providers")

# A pooled connection idle longer than this (seconds) gets a liveness check before reuse:
# servers close idle keep-alive connections (uvicorn after 5 s, others after tens of seconds).
STALE_AFTER = 1.0


def ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies chain and hostname: against ``ca_file`` (a PEM file, or a
    directory of hashed certificates) when given, else the default store (``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` honoured, read now). Raises ``OSError``/``ssl.SSLError`` for a bad bundle."""
    if ca_file and os.path.isdir(ca_file):
        ctx = ssl.create_default_context(capath=ca_file)
    else:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization value

    @property
    def where(self) -> str:  # never the credentials
        return f"{_bracket(self.host)}:{self.port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_proxy(url: str) -> Proxy:
    """``http://[user:pass@]host[:port]`` (no scheme: http; default port 80). ValueError else."""
    if "://" not in url:
        url = "http://" + url
    u = urlsplit(url.strip())
    if u.scheme.lower() != "http":
        raise ValueError(f"unsupported proxy scheme {u.scheme!r}: only http:// proxies")
    if not u.hostname:
        raise ValueError("proxy URL has no host")
    try:
        port = u.port or 80
    except ValueError:
        raise ValueError("proxy URL has an invalid port") from None
    auth = None
    if u.username is not None:
        cred = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        auth = "Basic " + base64.b64encode(cred).decode("ascii")
    return Proxy(u.hostname, port, auth)


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name.lower()) or env.get(name.upper()) or ""


def bypass_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma or space separated) exempts ``host:port``: ``*`` matches all;
    a domain matches itself and its subdomains (``example.com``, ``.example.com`` and
    ``*.example.com`` alike); an IP matches itself, a CIDR block (``10.0.0.0/8``, ``fd00::/8``)
    every address in it; ``entry:port`` (``[v6]:port``) only that port. Case-insensitive."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in no_proxy.replace(" ", ",").replace("\t", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, eport = entry, None
        if entry.startswith("["):  # [v6] or [v6]:port
            name, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                eport = int(rest[1:])
        elif entry.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
            h, p = entry.split(":")
            if p.isdigit():
                name, eport = h, int(p)
        if eport is not None and eport != port:
            continue
        if "/" in name:
            if ip is not None:
                try:
                    if ip in ipaddress.ip_network(name, strict=False):
                        return True
                except ValueError:
                    pass
            continue
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if not name:
            continue
        if ip is not None:
            try:
                if ip == ipaddress.ip_address(name):
                    return True
            except ValueError:
                pass
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def proxy_from_env(
    scheme: str, host: str, port: int, env: Mapping[str, str] | None = None
) -> str | None:
    """The proxy URL the environment gives for an upstream, or None (none set, or NO_PROXY)."""
    env = os.environ if env is None else env
    url = _env(env, "https_proxy" if scheme == "https" else "http_proxy").strip()
    if not url or bypass_proxy(host, port, _env(env, "no_proxy")):
        return None
    return url


class _TunnelReply(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: (status, reason) once its head is in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self.buf = b""
        self.where = where
        self.reply: asyncio.Future[tuple[int, str]] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self.reply.set_exception(HTTPError(f"proxy {self.where}: reply head too long"))
            return
        parts = self.buf[:end].split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self.reply.set_exception(HTTPError(f"proxy {self.where}: invalid reply to CONNECT"))
            return
        status = int(parts[1])
        if 200 <= status < 300 and len(self.buf) > end + 4:
            self.reply.set_exception(
                HTTPError(f"proxy {self.where}: sent data before the tunnel was used")
            )
            return
        reason = parts[2].decode("latin-1").strip() if len(parts) > 2 else ""
        self.reply.set_result((status, reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(
                HTTPError(f"proxy {self.where} closed the connection before answering CONNECT")
            )


class _Conn(asyncio.Protocol):
    __slots__ = (
        "body",
        "chunks",
        "closed",
        "complete",
        "deadline",
        "done",
        "head",
        "headers_done",
        "idle",
        "keep_alive",
        "loop",
        "parser",
        "released_at",
        "sent",
        "status",
        "timer",
        "transport",
        "waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.released_at = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.sent = False  # the request was written: it may have reached the upstream
        self.head: list[bytes] = []  # what arrived until the head was parsed (Head parses it)
        self.body: list[bytes] = []
        self.chunks: collections.deque[bytes] | None = None
        self.complete = False
        self.keep_alive = (
            False  # read at message end: httptools forgets it once the message is done
        )
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
        if not self.status:  # the head is not parsed yet: keep it (a reference, not a copy)
            self.head.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPError(f"invalid HTTP response: {exc}", sent=self.sent))
            self.close()
        if (
            self.chunks is not None and self.timer is not None and not self.complete
        ):  # streams: idle timer
            self.timer.cancel()
            self.timer = self.loop.call_later(self.idle, self.on_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(HTTPError(f"connection lost ({exc or 'closed by peer'})", sent=self.sent))

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
        self._fail(HTTPTimeout("upstream timed out", sent=self.sent))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.deadline is not None:
            self.deadline.cancel()
        if self.transport is not None:
            self.transport.close()


class HTTPPool:
    """Keep-alive connections to one origin (``base_url``'s scheme, host and port).

    ``ca_file``: trust these CAs instead of the default store (https only). ``proxy``: None
    reads the environment; a URL uses that proxy; ``False`` or ``""`` connects directly."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        max_idle: int = 256,
        ca_file: str | None = None,
        proxy: str | bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "localhost"
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.where = f"{_bracket(self.host)}:{self.port}"
        prefix = url.path.rstrip("/")
        host_header = _bracket(self.host) if url.port is None else self.where
        lines = [f"Host: {host_header}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.proxy: Proxy | None = None
        self.setup_error: str | None = None  # a proxy from the environment that cannot be used
        if proxy is None:
            proxy_url = proxy_from_env(url.scheme, self.host, self.port, env)
            source = "HTTPS_PROXY" if self.tls else "HTTP_PROXY"
        else:
            proxy_url, source = (proxy or None), "proxy"
        if proxy_url:
            try:
                self.proxy = parse_proxy(proxy_url)
            except ValueError as exc:
                self.setup_error = f"{source} for {self.where} cannot be used: {exc}"
                log.warning("%s", self.setup_error)
        self.connect_request = b""
        if self.proxy is not None:
            auth = self.proxy.authorization
            if self.tls:  # a CONNECT tunnel per connection
                self.connect_request = (
                    f"CONNECT {self.where} HTTP/1.1\r\nHost: {self.where}\r\n"
                    + (f"Proxy-Authorization: {auth}\r\n" if auth else "")
                    + "\r\n"
                ).encode("latin-1")
            else:  # absolute-form requests to the proxy
                prefix = f"http://{host_header}{prefix}"
                if auth:
                    lines.append(f"Proxy-Authorization: {auth}")
        self.prefix = prefix
        self.head_tail = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.idle: list[_Conn] = []
        self.max_idle = max_idle
        self.ssl_context = ssl_context(ca_file) if self.tls else None

    async def _connect(self, timeout: float) -> _Conn:
        if self.setup_error is not None:
            raise HTTPError(self.setup_error)
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        via = f" via proxy {proxy.where}" if proxy is not None else ""
        try:
            if proxy is None:
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
            elif not self.tls:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: _Conn(loop), proxy.host, proxy.port), timeout
                )
            else:
                conn = await asyncio.wait_for(self._tunnel(loop, proxy), timeout)
        except TimeoutError:
            raise HTTPTimeout(f"connect to {self.where}{via} timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise HTTPError(
                f"TLS certificate of {self.where}{via} rejected: "
                f"{exc.verify_message or exc.reason or exc}"
            ) from None
        except ssl.SSLError as exc:
            raise HTTPError(
                f"TLS handshake with {self.where}{via} failed: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            target = f"proxy {proxy.where}" if proxy is not None else self.where
            raise HTTPError(f"cannot connect to {target}: {exc.strerror or exc}") from None
        return conn

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, proxy: Proxy) -> _Conn:
        """TCP to the proxy, CONNECT to the upstream, then TLS with the upstream inside."""
        transport, reply = await loop.create_connection(
            lambda: _TunnelReply(loop, proxy.where), proxy.host, proxy.port
        )
        try:
            transport.write(self.connect_request)
            status, reason = await reply.reply
            if not 200 <= status < 300:
                hint = ""
                if status == 407:
                    hint = (
                        " (credentials rejected)"
                        if proxy.authorization
                        else " (no credentials in the proxy URL)"
                    )
                raise HTTPError(
                    f"proxy {proxy.where} refused CONNECT to {self.where}: "
                    f"{status} {reason}{hint}".rstrip()
                )
            conn = _Conn(loop)
            assert self.ssl_context is not None
            tls = await loop.start_tls(transport, conn, self.ssl_context, server_hostname=self.host)
            if tls is None:
                raise HTTPError(f"TLS through proxy {proxy.where} to {self.where} failed")
            conn.connection_made(tls)
            return conn
        except BaseException:
            transport.close()
            raise

    def _acquire_idle(self) -> _Conn | None:
        """A pooled connection not known to be dead (those are closed and skipped). Only a
        connection found dead before the request is written is replaced silently; once it is
        written, a lost connection is the caller's failed attempt (the upstream may have done
        the work)."""
        while self.idle:
            conn = self.idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                conn.close()
                continue
            return conn
        return None

    @staticmethod
    async def _still_open(conn: _Conn) -> bool:
        """Whether a connection idle for a while (the server may have closed it) is still open:
        a few turns of the event loop let a FIN or RST that is waiting be read."""
        for _ in range(3):  # the read, the close, connection_lost (TLS: one more layer)
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                conn.close()
                return False
            await asyncio.sleep(0)
        return not (conn.closed or conn.transport is None or conn.transport.is_closing())

    def _release(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        if conn.complete and not conn.closed and conn.keep_alive and len(self.idle) < self.max_idle:
            conn.released_at = conn.loop.time()
            self.idle.append(conn)
        else:
            conn.close()

    def _request_bytes(self, method: str, path: str, body: bytes, headers: bytes = b"") -> bytes:
        return (
            b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n"
            % (method.encode(), (self.prefix + path).encode(), self.head_tail, headers, len(body))
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
        headers: bytes = b"",
    ) -> _Conn:
        data = self._request_bytes(method, path, body, headers)
        conn = self._acquire_idle() if self.idle else None
        if conn is not None and (
            conn.loop.time() - conn.released_at <= STALE_AFTER or await self._still_open(conn)
        ):
            conn._reset()
        else:
            conn = await self._connect(connect)
        conn.idle = idle
        if stream:
            conn.chunks = collections.deque()
            conn.headers_done = conn.loop.create_future()
        conn.timer = conn.loop.call_later(idle, conn.on_timeout)
        if total is not None:
            conn.deadline = conn.loop.call_later(total, conn.on_timeout)
        assert conn.transport is not None
        conn.sent = True
        conn.transport.write(data)
        try:
            if stream:
                await conn.headers_done  # type: ignore[misc]
            else:
                await conn.done
        except BaseException:
            conn.close()
            raise
        return conn

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        connect: float,
        timeout: float,
        headers: bytes = b"",
    ) -> Response:
        """The whole response; ``timeout`` bounds the wait for all of it. ``headers``: extra
        request header lines for this request (``b"Name: value\\r\\n"`` each)."""
        conn = await self._send(method, path, body, connect, timeout, False, None, headers)
        response = Response(conn.status, b"".join(conn.body), Head(conn.head))
        self._release(conn)
        return response

    async def stream(
        self, method: str, path: str, body: bytes, *, connect: float, idle: float, total: float
    ) -> StreamResponse:
        """Status and headers, then the body chunks; ``idle`` bounds the wait for headers and
        between chunks, ``total`` the whole response."""
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

        return StreamResponse(conn.status, Head(conn.head), chunks())

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


def pool_for(config: ProviderConfig, base_url: str, headers: dict[str, str]) -> HTTPPool:
    """The transport to one of ``config``'s origins under its TLS and proxy policy (``ca_file``,
    ``proxy``; validated in thrifty.config): the one place both are applied."""
    return HTTPPool(
        base_url,
        headers,
        ca_file=config.options.get("ca_file") or None,
        proxy=config.options.get("proxy"),
    )
