"""Adapter for OpenAI-compatible upstreams: OpenAI, OpenRouter, Together, DeepSeek, Z.ai,
Moonshot, Gemini's OpenAI endpoint, vLLM, SGLang, llama.cpp, Ollama, and thrifty's fake.

Uses one pooled aiohttp session per provider (httpx costs several times the CPU per
request, which matters at the gateway's budget of a fraction of a millisecond).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson

from thrifty.gateway.config import ProviderConfig, Timeouts
from thrifty.providers.base import UpstreamError, status_retryable


def _error_message(status: int, body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode(errors="replace") or f"HTTP {status}"


class OpenAICompatProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.base_url = (config.base_url or "").rstrip("/")
        self.headers = {"content-type": "application/json", **config.headers}
        if config.api_key:
            self.headers["authorization"] = f"Bearer {config.api_key}"
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            self.session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, skip_auto_headers=("User-Agent",),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )

    def _timeout(self, t: Timeouts) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_token)

    async def _post(self, path: str, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        assert self.session is not None, "provider not started"
        try:
            async with self.session.post(
                self.base_url + path, data=orjson.dumps(body), timeout=self._timeout(timeouts)
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise UpstreamError(resp.status, f"{self.name}: {_error_message(resp.status, raw)}",
                                        retryable=status_retryable(resp.status))
        except asyncio.TimeoutError:
            raise UpstreamError(504, f"{self.name}: upstream timed out", retryable=True,
                                type="timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"{self.name}: connection failed ({type(exc).__name__})",
                                retryable=True, type="connection_error") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(502, f"{self.name}: upstream sent invalid JSON", retryable=True) from None

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        return await self._post("/chat/completions", body, timeouts)

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        return await self._post("/embeddings", body, timeouts)

    async def chat_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        assert self.session is not None, "provider not started"
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            async with self.session.post(
                self.base_url + "/chat/completions", data=orjson.dumps(body), timeout=self._timeout(timeouts)
            ) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    raise UpstreamError(resp.status, f"{self.name}: {_error_message(resp.status, raw)}",
                                        retryable=status_retryable(resp.status))
                done = False
                started = False
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(502, f"{self.name}: invalid stream chunk", retryable=False) from None
                    if "error" in chunk:
                        raise UpstreamError(502, f"{self.name}: {chunk['error'].get('message', 'stream error')}",
                                            retryable=False)
                    started = True
                    yield chunk
                if not done:
                    raise UpstreamError(502, f"{self.name}: stream ended before [DONE]", retryable=False,
                                        type="stream_broken")
        except asyncio.TimeoutError:
            raise UpstreamError(504, f"{self.name}: upstream timed out", retryable=True, type="timeout") from None
        except aiohttp.ClientError as exc:
            if started:  # the client has seen part of the answer: no retry can hide this
                raise UpstreamError(502, f"{self.name}: connection lost mid-stream ({type(exc).__name__})",
                                    retryable=False, type="stream_broken") from None
            raise UpstreamError(502, f"{self.name}: connection lost ({type(exc).__name__})",
                                retryable=True, type="connection_error") from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
