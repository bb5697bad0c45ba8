"""Adapter for OpenAI-compatible upstreams: OpenAI, OpenRouter, Together, DeepSeek, Z.ai,
Moonshot, Gemini's OpenAI endpoint, vLLM, SGLang, llama.cpp, Ollama, and thrifty's fake.

Calls go through :class:`thrifty.providers.http.HTTPPool` (pooled keep-alive connections,
a few tens of microseconds of CPU per call).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from thrifty.providers.base import UpstreamError, status_retryable
from thrifty.providers.config import ProviderConfig, Timeouts
from thrifty.providers.http import HTTPError, HTTPTimeout, line_batches, pool_for
from thrifty.providers.transport import Head, Transport, retry_after


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


def status_error(name: str, status: int, body: bytes, headers: Head) -> UpstreamError:
    """An upstream's error answer; a 429's or 503's ``Retry-After`` is kept (headers are only
    parsed here, off the success path)."""
    exc = UpstreamError(
        status, f"{name}: {_error_message(status, body)}", retryable=status_retryable(status)
    )
    if status in (429, 503):
        exc.retry_after = retry_after(headers.get("retry-after"))
    return exc


class OpenAICompatProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.base_url = (config.base_url or "").rstrip("/")
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": "thrifty/0.1",
            **config.headers,
        }
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"
        self.pool: Transport | None = None
        self.config = config

    async def start(self) -> None:
        if self.pool is None:  # TLS trust and proxy: the provider's, as for its batch API
            self.pool = pool_for(self.config, self.base_url, self.headers)

    def _transport_error(self, exc: HTTPError, started: bool = False) -> UpstreamError:
        if started:  # the client has seen part of the answer: no retry can hide this
            return UpstreamError(
                502,
                f"{self.name}: stream broke mid-answer ({exc})",
                retryable=False,
                type="stream_broken",
            )
        if isinstance(exc, HTTPTimeout):
            err = UpstreamError(504, f"{self.name}: {exc}", retryable=True, type="timeout")
        else:
            err = UpstreamError(502, f"{self.name}: {exc}", retryable=True, type="connection_error")
        err.cost_unknown = exc.sent
        return err

    async def _post(self, path: str, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        assert self.pool is not None, "provider not started"
        try:
            r = await self.pool.request(
                "POST", path, orjson.dumps(body), connect=timeouts.connect, timeout=timeouts.total
            )
        except HTTPError as exc:
            raise self._transport_error(exc) from None
        if r.status >= 400:
            raise status_error(self.name, r.status, r.body, r.headers)
        try:
            return orjson.loads(r.body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                502, f"{self.name}: upstream sent invalid JSON", retryable=True
            ) from None

    async def _stream(
        self, path: str, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[bytes]]:
        """Batches of response lines of a streamed call, one per network read (HTTP errors are raised
        before the first batch)."""
        assert self.pool is not None, "provider not started"
        try:
            r = await self.pool.stream(
                "POST",
                path,
                orjson.dumps(body),
                connect=timeouts.connect,
                idle=timeouts.first_token,
                total=timeouts.total,
            )
        except HTTPError as exc:
            raise self._transport_error(exc) from None
        if r.status >= 400:
            try:
                raw = b"".join([c async for c in r.chunks])
            except HTTPError as exc:
                raise self._transport_error(exc) from None
            raise status_error(self.name, r.status, raw, r.headers)
        started = False
        try:
            async for lines in line_batches(r.chunks):
                started = True
                yield lines
        except HTTPError as exc:
            raise self._transport_error(exc, started) from None

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        return await self._post("/chat/completions", body, timeouts)

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        return await self._post("/embeddings", body, timeouts)

    async def chat_stream(
        self, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[dict[str, Any]]]:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        done = False
        async for lines in self._stream("/chat/completions", body, timeouts):
            batch = []
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        502,
                        f"{self.name}: invalid stream chunk",
                        retryable=False,
                        type="stream_broken",
                    ) from None
                if "error" in chunk:
                    err = chunk["error"]
                    message = err.get("message", "stream error") if isinstance(err, dict) else err
                    raise UpstreamError(
                        502, f"{self.name}: {message}", retryable=False, type="stream_broken"
                    )
                batch.append(chunk)
            if batch:
                yield batch
            if done:
                break
        if not done:
            raise UpstreamError(
                502,
                f"{self.name}: stream ended before [DONE]",
                retryable=False,
                type="stream_broken",
            )

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
