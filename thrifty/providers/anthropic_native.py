"""Adapter for Anthropic's native Messages API: OpenAI-format requests in, OpenAI-format
responses and stream chunks out (translation in :mod:`thrifty.providers.translate`)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson

from thrifty.gateway.config import ProviderConfig, Timeouts
from thrifty.providers.base import UpstreamError, status_retryable
from thrifty.providers.openai_compat import OpenAICompatProvider, _error_message
from thrifty.providers.translate import AnthropicStreamToOpenAI, anthropic_to_openai_response, \
    openai_to_anthropic_request, parse_sse

API_VERSION = "2023-06-01"


class AnthropicProvider(OpenAICompatProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.headers.pop("authorization", None)
        self.headers["anthropic-version"] = API_VERSION
        if config.api_key:
            self.headers["x-api-key"] = config.api_key
        self.base_url = self.base_url.removesuffix("/v1")

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        req = openai_to_anthropic_request(body)
        req.pop("stream", None)
        resp = await self._post("/v1/messages", req, timeouts)
        return anthropic_to_openai_response(resp)

    async def chat_stream(self, body: dict[str, Any], timeouts: Timeouts) -> AsyncIterator[dict[str, Any]]:
        assert self.session is not None, "provider not started"
        req = openai_to_anthropic_request({**body, "stream": True})
        conv = AnthropicStreamToOpenAI()
        try:
            async with self.session.post(self.base_url + "/v1/messages", data=orjson.dumps(req),
                                         timeout=self._timeout(timeouts)) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    raise UpstreamError(resp.status, f"{self.name}: {_error_message(resp.status, raw)}",
                                        retryable=status_retryable(resp.status))
                stopped = False
                started = False
                async for event, data in parse_sse(resp.content.__aiter__()):
                    try:
                        doc = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(502, f"{self.name}: invalid stream event", retryable=False) from None
                    if doc.get("type") == "error" or event == "error":
                        err = doc.get("error") or {}
                        raise UpstreamError(502, f"{self.name}: {err.get('message', 'stream error')}",
                                            retryable=False, type="stream_broken")
                    for chunk in conv.feed(doc):
                        started = True
                        yield chunk
                    if doc.get("type") == "message_stop":
                        stopped = True
                if not stopped:
                    raise UpstreamError(502, f"{self.name}: stream ended before message_stop", retryable=False,
                                        type="stream_broken")
        except asyncio.TimeoutError:
            raise UpstreamError(504, f"{self.name}: upstream timed out", retryable=True, type="timeout") from None
        except aiohttp.ClientError as exc:
            if started:  # the client has seen part of the answer: no retry can hide this
                raise UpstreamError(502, f"{self.name}: connection lost mid-stream ({type(exc).__name__})",
                                    retryable=False, type="stream_broken") from None
            raise UpstreamError(502, f"{self.name}: connection lost ({type(exc).__name__})", retryable=True,
                                type="connection_error") from None

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        raise UpstreamError(400, f"{self.name}: Anthropic has no embeddings API", retryable=False)
