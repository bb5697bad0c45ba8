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
from thrifty.providers.http import HTTPError, HTTPPool, HTTPTimeout, line_batches


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
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": "thrifty/0.1",
            **config.headers,
        }
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"
        self.pool: HTTPPool | None = None
        # TLS trust and proxy (validated in thrifty.gateway.config): None reads the environment
        self.ca_file: str | None = config.options.get("ca_file") or None
        self.proxy: str | bool | None = config.options.get("proxy")

    async def start(self) -> None:
        if self.pool is None:
            self.pool = HTTPPool(
                self.base_url, self.headers, ca_file=self.ca_file, proxy=self.proxy
            )

    def _transport_error(self, exc: HTTPError, started: bool = False) -> UpstreamError:
        if started:  # the client has seen part of the answer: no retry can hide this
            return UpstreamError(
                502,
                f"{self.name}: stream broke mid-answer ({exc})",
                retryable=False,
                type="stream_broken",
            )
        if isinstance(exc, HTTPTimeout):
            return UpstreamError(504, f"{self.name}: {exc}", retryable=True, type="timeout")
        return UpstreamError(502, f"{self.name}: {exc}", retryable=True, type="connection_error")

    async def _post(self, path: str, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        assert self.pool is not None, "provider not started"
        try:
            status, raw = await self.pool.request(
                "POST", path, orjson.dumps(body), connect=timeouts.connect, timeout=timeouts.total
            )
        except HTTPError as exc:
            raise self._transport_error(exc) from None
        if status >= 400:
            raise UpstreamError(
                status,
                f"{self.name}: {_error_message(status, raw)}",
                retryable=status_retryable(status),
            )
        try:
            return orjson.loads(raw)
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
            status, chunks = await self.pool.stream(
                "POST",
                path,
                orjson.dumps(body),
                connect=timeouts.connect,
                idle=timeouts.first_token,
                total=timeouts.total,
            )
        except HTTPError as exc:
            raise self._transport_error(exc) from None
        if status >= 400:
            raw = b"".join([c async for c in chunks])
            raise UpstreamError(
                status,
                f"{self.name}: {_error_message(status, raw)}",
                retryable=status_retryable(status),
            )
        started = False
        try:
            async for lines in line_batches(chunks):
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
