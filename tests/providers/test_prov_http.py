"""The pooled upstream HTTP client: keep-alive reuse, recovery from connections the server closed,
chunked streams, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from thrifty.providers.http import HTTPPool, HTTPTimeout, line_batches
from thrifty.testing.fake_upstream import FakeUpstream

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def test_connections_are_reused_and_dead_ones_replaced():
    first = FakeUpstream().start()
    port = first.port

    async def run():
        pool = HTTPPool(first.base_url, {"Content-Type": "application/json"})
        for _ in range(3):
            status, body = await pool.request(
                "POST", "/chat/completions", BODY, connect=1, timeout=2
            )
            assert status == 200 and b"chat.completion" in body
        assert len(pool.idle) == 1  # one connection served all three
        first.stop()  # the server goes away: the pooled connection is now dead
        second = FakeUpstream(port=port).start()
        try:
            status, _ = await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=2)
            assert status == 200 and second.hits == 1
        finally:
            pool.close()
            second.stop()

    asyncio.run(run())


def test_stream_is_decoded_from_chunked_encoding():
    async def run(fake):
        pool = HTTPPool(fake.base_url, {"Content-Type": "application/json"})
        status, chunks = await pool.stream(
            "POST", "/chat/completions", b'{"model":"m","stream":true}', connect=1, idle=2, total=5
        )
        lines = [line async for batch in line_batches(chunks) for line in batch if line]
        pool.close()
        return status, lines

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
            with pytest.raises(HTTPTimeout):
                await pool.request("POST", "/chat/completions", BODY, connect=1, timeout=0.2)
        finally:
            pool.close()

    with FakeUpstream("hang") as fake:
        asyncio.run(run(fake))
