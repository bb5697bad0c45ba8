"""A streamed answer as the pipeline hands it to an endpoint: chat chunks in, settled at the end.

:class:`AnswerStream` is an async iterator of chunk batches (what one upstream read brought).
The chunks that end the answer (``finish_reason``, usage) are held back until the request is
settled, so the client never sees a complete answer the ledger does not hold; the endpoint then
renders :attr:`AnswerStream.held` and the cost. A break mid-way sets :attr:`error` (the request
is settled as failed with what was relayed); output past what the budget hold covers (an
upstream that ignores ``max_tokens``) stops the relay and sets :attr:`error` too; a client that
goes away is settled by :meth:`aclose`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from thrifty.providers.base import UpstreamError, Usage

log = logging.getLogger("thrifty.gateway")

# (status, usage, error type) -> (cost, frontier cost): the pipeline's settle for this call
Settle = Callable[[int, Usage, str | None], Awaitable[tuple[float, float]]]


class StreamError(Exception):
    """Why a started stream could not finish; rendered as the stream's last event."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class AnswerStream:
    """One streamed answer; iterate it, then read :attr:`held`, :attr:`cost`, :attr:`error`."""

    def __init__(
        self,
        first: list[dict[str, Any]] | None,
        rest: AsyncIterator[list[dict[str, Any]]] | None,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        settle: Settle,
        on_complete: Callable[[list[dict[str, Any]], Usage], None] | None = None,
    ) -> None:
        self._first = first
        self._rest = rest
        self.prompt_tokens = prompt_tokens
        self.max_output_tokens = max_output_tokens  # what the hold covers (0: no bound)
        self._settle = settle
        self._on_complete = on_complete  # sees every chunk once the answer is whole (cache store)
        self.held: list[dict[str, Any]] = []
        self.chunks: list[dict[str, Any]] | None = [] if on_complete is not None else None
        self.usage: Usage | None = None
        self.usage_reported = False  # the upstream sent usage (else it is the gateway's estimate)
        self.cost = self.frontier = 0.0
        self.error: StreamError | None = None
        self.done = False
        self._chars = 0
        self._pieces = 0
        self._batches: Any = None  # the relay's generator, once iterated

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        self._batches = self._relay()
        return self._batches

    async def _relay(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The batches to relay now; those chunks that end the answer (a finish reason, usage)
        are held. One generator for the whole stream, its per-read work inline: this runs for
        every read of every stream (a method call per read measurably cost more)."""
        held = self.held
        chunks = self.chunks
        bound = self.max_output_tokens
        chars = pieces = 0  # of the content relayed so far (self's copies: at each batch's end)
        batch = self._first
        self._first = None
        while True:
            if batch is None:
                rest = self._rest
                if rest is None:
                    await self._finish()
                    return
                try:
                    batch = await rest.__anext__()
                except StopAsyncIteration:
                    await self._finish()
                    return
                except UpstreamError as exc:
                    await self._fail(
                        502, "stream_broken", f"The upstream stream broke mid-answer: {exc.message}"
                    )
                    return
            if chunks is not None:
                chunks.extend(batch)
            out: list[dict[str, Any]] = []
            for chunk in batch:
                usage = chunk.get("usage")
                if usage:
                    self.usage = Usage.from_openai(usage)
                    self.usage_reported = True
                choices = chunk.get("choices")
                if not choices:
                    held.append(chunk)
                    continue
                ends = False
                for c in choices:
                    delta = c.get("delta")
                    if delta:
                        content = delta.get("content")
                        if content:
                            chars += len(content)
                            pieces += 1
                    if c.get("finish_reason"):
                        ends = True
                (held if ends else out).append(chunk)
            batch = None
            self._chars, self._pieces = chars, pieces
            if bound and self._estimate() > bound:
                await self._stop_overrun()
                return
            if out:
                yield out

    def _estimate(self) -> int:
        """Output tokens so far: the upstream's count if it sent one, else the larger of the
        content pieces (one per token for most servers) and characters / 4."""
        if self.usage is not None and self.usage_reported:
            return self.usage.completion_tokens
        return max(self._pieces, self._chars // 4)

    def _estimated_usage(self) -> Usage:
        return Usage(self.prompt_tokens, max(1, self._estimate()))

    async def _finish(self) -> None:
        if self.usage is None:
            # The upstream sent no usage (llama.cpp's server, some proxies): bill an estimate.
            self.usage = self._estimated_usage()
        self.cost, self.frontier = await self._settle(200, self.usage, None)
        self.done = True
        if self._on_complete is not None and self.chunks is not None:
            self._on_complete(self.chunks, self.usage)

    async def _fail(self, status: int, error_type: str, message: str) -> None:
        self.usage = self.usage if self.usage_reported and self.usage else self._estimated_usage()
        self.cost, self.frontier = await self._settle(status, self.usage, error_type)
        self.error = StreamError(message, error_type)
        self.done = True

    async def _stop_overrun(self) -> None:
        await self._close_upstream()
        # Bill what the hold covers: the relay stopped at the bound, the rest was never relayed.
        self.usage = Usage(self.prompt_tokens, self.max_output_tokens)
        self.usage_reported = True
        await self._fail(
            200,
            "hold_exhausted",
            "The answer was stopped: the upstream produced more output than max_tokens allows "
            f"({self.max_output_tokens} tokens), which is all the budget hold covers.",
        )

    async def _close_upstream(self) -> None:
        rest, self._rest = self._rest, None
        closer = getattr(rest, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception as exc:  # noqa: BLE001 (closing a broken upstream stream must not fail the settle)
                log.debug("closing an upstream stream failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        """The client went away before the end: stop the upstream and settle what it produced."""
        batches, self._batches = self._batches, None
        if batches is not None:
            await batches.aclose()  # paused at a relayed batch: nothing more of it runs
        if self.done:
            return
        await self._close_upstream()
        await self._fail(499, "client_disconnected", "The client disconnected.")


async def from_body(body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
    """A complete chat completion as stream chunks (a cache hit, a cascade's kept answer): one
    content chunk per choice, then a finish chunk each and the usage chunk."""
    base = {
        "id": body.get("id"),
        "object": "chat.completion.chunk",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    out: list[dict[str, Any]] = []
    for c in body.get("choices") or ():
        msg = c.get("message") or {}
        delta: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": msg.get("content")}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{**t, "index": i} for i, t in enumerate(msg["tool_calls"])]
        index = c.get("index", 0)
        out.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        out.append(
            {
                **base,
                "choices": [{"index": index, "delta": {}, "finish_reason": c.get("finish_reason")}],
            }
        )
    if body.get("usage"):
        out.append({**base, "choices": [], "usage": body["usage"]})
    yield out


def completion_of(chunks: list[dict[str, Any]], usage: Usage) -> dict[str, Any] | None:
    """A streamed answer's chunks reassembled into a chat completion (to store in the cache);
    None for what is not stored: tool calls, empty answers."""
    doc: dict[str, Any] = {}
    texts: dict[int, list[str]] = {}
    finish: dict[int, Any] = {}
    for chunk in chunks:
        doc = doc or chunk
        for c in chunk.get("choices") or ():
            delta = c.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                return None
            texts.setdefault(c.get("index", 0), []).append(delta.get("content") or "")
            if c.get("finish_reason"):
                finish[c.get("index", 0)] = c["finish_reason"]
    if not texts:
        return None
    return {
        "id": doc.get("id"),
        "object": "chat.completion",
        "created": doc.get("created"),
        "model": doc.get("model"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(t)},
                "finish_reason": finish.get(i, "stop"),
            }
            for i, t in sorted(texts.items())
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }
