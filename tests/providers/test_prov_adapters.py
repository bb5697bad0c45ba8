"""Adapters against the fake upstream: errors are classified for retry, streams that break are caught."""

from __future__ import annotations

import asyncio

import pytest

from thrifty.providers.anthropic_native import AnthropicProvider
from thrifty.providers.base import UpstreamError
from thrifty.providers.config import ProviderConfig, Timeouts
from thrifty.providers.openai_compat import OpenAICompatProvider
from thrifty.testing.fake_upstream import REPLY, FakeUpstream

FAST = Timeouts(connect=1, first_token=0.3, total=0.5)
BODY = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}


async def _run(provider, coro_fn):
    await provider.start()
    try:
        return await coro_fn(provider)
    finally:
        await provider.close()


def _openai(fake: FakeUpstream) -> OpenAICompatProvider:
    return OpenAICompatProvider(
        ProviderConfig("p", "openai", base_url=fake.base_url, api_key="sk-1")
    )


@pytest.mark.parametrize(
    "mode, status, retryable, kind",
    [
        ("error500", 500, True, "upstream_error"),
        ("hang", 504, True, "timeout"),
    ],
)
def test_failures_are_classified(mode, status, retryable, kind):
    with FakeUpstream(mode) as fake, pytest.raises(UpstreamError) as info:
        asyncio.run(_run(_openai(fake), lambda p: p.chat(BODY, FAST)))
    assert (info.value.status, info.value.retryable, info.value.type) == (status, retryable, kind)


def test_connection_refused_is_retryable():
    fake = FakeUpstream().start()
    fake.stop()
    with pytest.raises(UpstreamError) as info:
        asyncio.run(_run(_openai(fake), lambda p: p.chat(BODY, FAST)))
    assert info.value.retryable and info.value.type == "connection_error"


def test_broken_stream_raises_after_first_chunks():
    async def collect(p):
        got = []
        with pytest.raises(UpstreamError) as info:
            async for batch in p.chat_stream(BODY, FAST):
                got.extend(batch)
        return got, info.value

    with FakeUpstream("break_stream") as fake:
        got, err = asyncio.run(_run(_openai(fake), collect))
    assert got and not err.retryable


def test_anthropic_adapter_speaks_messages_api():
    async def both(p):
        full = await p.chat({**BODY, "max_tokens": 20}, FAST)
        chunks = [c async for batch in p.chat_stream(BODY, FAST) for c in batch]
        return full, chunks

    with FakeUpstream() as fake:
        prov = AnthropicProvider(
            ProviderConfig(
                "a", "anthropic", base_url=f"http://127.0.0.1:{fake.port}", api_key="sk-ant"
            )
        )
        assert prov.headers["x-api-key"] == "sk-ant" and "Authorization" not in prov.headers
        full, chunks = asyncio.run(_run(prov, both))
        assert fake.state.last_body["stream"] is True and fake.state.last_body["max_tokens"] == 4096
    assert (
        full["choices"][0]["message"]["content"] == REPLY
        and full["usage"]["completion_tokens"] == 9
    )
    assert (
        "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        ).strip()
        == REPLY
    )
