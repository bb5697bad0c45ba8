"""What every provider adapter offers the gateway.

The gateway speaks OpenAI's chat format internally: adapters take an OpenAI
request body (already validated, ``model`` set to the provider's name) and return
OpenAI response bodies or stream chunks, whatever their upstream speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from thrifty.errors import ThriftyError
from thrifty.providers.config import Timeouts


class UpstreamError(ThriftyError):
    """An upstream call that failed; ``retryable`` says whether another try may succeed."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retryable: bool,
        type: str = "upstream_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, type=type, code=code)
        self.retryable = retryable
        # True when this deployment cannot answer this request but says nothing about its health
        # (a replay model with no recording of the prompt): the chain's next model may answer.
        self.try_next_model = False
        # Seconds the upstream asked to wait before another try (Retry-After of a 429 or 503).
        self.retry_after: float | None = None
        # True when the request reached the upstream and no answer came back (the connection
        # was lost, or timed out, after it was written): the upstream may have done, and will
        # bill, the work, so the attempt's cost is unknown rather than zero.
        self.cost_unknown = False


def status_retryable(status: int) -> bool:
    return status == 429 or status == 408 or status >= 500


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage | None:
        if not usage:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
        )


class Provider(Protocol):
    name: str

    async def start(self) -> None:
        """Open connection pools / load data (called once the event loop runs)."""

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        """A non-streamed chat completion, as an OpenAI response body."""

    def chat_stream(
        self, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """OpenAI stream chunks in batches (what one network read brought, never empty); the last
        chunk carries ``usage`` when the upstream reports it."""

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        """An OpenAI embeddings response body."""

    async def close(self) -> None: ...
