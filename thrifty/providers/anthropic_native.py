"""Adapter for Anthropic's native Messages API: OpenAI-format requests in, OpenAI-format
responses and stream chunks out (translation in :mod:`thrifty.providers.translate`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from thrifty.providers.base import UpstreamError
from thrifty.providers.config import ProviderConfig, Timeouts
from thrifty.providers.openai_compat import OpenAICompatProvider
from thrifty.providers.translate import (
    AnthropicStreamToOpenAI,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)

API_VERSION = "2023-06-01"


class AnthropicProvider(OpenAICompatProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.headers.pop("Authorization", None)
        self.headers["anthropic-version"] = API_VERSION
        if config.api_key:
            self.headers["x-api-key"] = config.api_key
        self.base_url = self.base_url.removesuffix("/v1")

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        req = openai_to_anthropic_request(body)
        req.pop("stream", None)
        return anthropic_to_openai_response(await self._post("/v1/messages", req, timeouts))

    async def chat_stream(
        self, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[dict[str, Any]]]:
        req = openai_to_anthropic_request({**body, "stream": True})
        conv = AnthropicStreamToOpenAI()
        stopped = False
        async for lines in self._stream("/v1/messages", req, timeouts):
            batch = []
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # "event:" lines repeat the type that the data carries
                try:
                    doc = orjson.loads(line[5:].strip())
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        502,
                        f"{self.name}: invalid stream event",
                        retryable=False,
                        type="stream_broken",
                    ) from None
                if doc.get("type") == "error":
                    err = doc.get("error") or {}
                    raise UpstreamError(
                        502,
                        f"{self.name}: {err.get('message', 'stream error')}",
                        retryable=False,
                        type="stream_broken",
                    )
                batch.extend(conv.feed(doc))
                if doc.get("type") == "message_stop":
                    stopped = True
            if batch:
                yield batch
        if not stopped:
            raise UpstreamError(
                502,
                f"{self.name}: stream ended before message_stop",
                retryable=False,
                type="stream_broken",
            )

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        raise UpstreamError(400, f"{self.name}: Anthropic has no embeddings API", retryable=False)
