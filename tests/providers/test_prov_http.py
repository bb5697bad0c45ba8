"""The pooled upstream HTTP client: keep-alive reuse, recovery from connections the server closed,
chunked streams, timeouts."""

from __future__ import annotations

import asyncio
import email.utils

import pytest

from thrifty.providers.http import HTTPError, HTTPPool, HTTPTimeout, line_batches
from thrifty.providers.transport import retry_after
from thrifty.testing.fake_upstream import FakeUpstream

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def test_connections_are_reused_and_dead_ones_replaced(monkeypatch):
    """A pooled connection the server closed while it sat idle is found dead before the
    request is written (the liveness check of idle connections), and replaced silently."""
    monkeypatch.setattr("thrifty.providers.http.STALE_AFTER", 0.0)
    first = FakeUpstream().start()
    port = first.port

    async def run():
        pool = HTTPPool(first.base_url, {"Content-Type": "application/json"})
        for _ in range(3):
            r = await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
            assert r.status == 200 and b"chat.completion" in r.body
        assert len(pool.idle) == 1  # one connection served all three
        # the server goes away (this loop is blocked meanwhile: its FIN is not read yet)
        first.stop()
        second = FakeUpstream(port=port).start()
        try:
            r = await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
            assert r.status == 200 and second.hits == 1
        finally:
            pool.close()
            second.stop()

    asyncio.run(run())


def test_a_request_lost_after_it_was_written_is_not_resent():
    """The upstream read the request (it may have done the work) and reset the connection: the
    pool says so (``sent``) and does not send it again on a new connection by itself."""
    async def run(fake):
        pool = HTTPPool(fake.base_url, {})
        try:
            r = await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
            assert r.status == 200
            with pytest.raises(HTTPError) as info:  # on the pooled connection
                await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
            assert info.value.sent
            with pytest.raises(HTTPError) as info:  # and on a new one
                await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
            assert info.value.sent
        finally:
            pool.close()

    with FakeUpstream("reset", ok_first=1) as fake:
        asyncio.run(run(fake))
        assert fake.hits == 3  # each request reached it once, none twice


def test_a_refused_connection_was_not_sent():
    async def run(port):
        pool = HTTPPool(f"http://127.0.0.1:{port}/v1", {})
        with pytest.raises(HTTPError) as info:
            await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
        return info.value

    fake = FakeUpstream().start()
    port = fake.port
    fake.stop()
    assert not asyncio.run(run(port)).sent


def test_error_headers_are_read_lazily():
    async def run(fake):
        pool = HTTPPool(fake.base_url, {})
        try:
            return await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
        finally:
            pool.close()

    with FakeUpstream("rate_limited", retry_after="7") as fake:
        r = asyncio.run(run(fake))
    assert r.status == 429 and r.headers.get("Retry-After") == "7"
    assert r.headers.get("content-type") == "application/json"


def test_stream_is_decoded_from_chunked_encoding():
    async def run(fake):
        pool = HTTPPool(fake.base_url, {"Content-Type": "application/json"})
        r = await pool.stream(
            "POST", "/chat/completions", b'{"model":"m","stream":true}', connect=1, idle=2, total=5
        )
        lines = [line async for batch in line_batches(r.chunks) for line in batch if line]
        pool.close()
        return r.status, lines

    with FakeUpstream() as fake:
        status, lines = asyncio.run(run(fake))
    assert (
        status == 200
        and lines[-1] == b"data: [DONE]"
        and all(ln.startswith(b"data: ") for ln in lines)
    )


def test_timeout():
    async def run(fake):
        pool = HTTPPool(fake.base_url, {})
        try:
            with pytest.raises(HTTPTimeout) as info:
                await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=0.2)
            assert info.value.sent  # the upstream has the request: it may be working on it
        finally:
            pool.close()

    with FakeUpstream("hang") as fake:
        asyncio.run(run(fake))


def test_retry_after_reads_seconds_and_http_dates():
    now = 1_767_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after("7") == 7.0 and retry_after(" 0 ") == 0.0
    assert retry_after(date, now) == 30.0
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0  # past: now
    assert retry_after("-5") == 0.0
    for bad in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2026 00:00:00 GMT"):
        assert retry_after(bad) is None
