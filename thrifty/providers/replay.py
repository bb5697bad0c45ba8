"""The replay provider: real recorded answers of real models, offline.

It answers a prompt it knows (the last user message, matched exactly after trimming
whitespace) with the response the requested model gave in the benchmark, with that
call's token counts; a prompt it does not know gets a clear 400, never an invented
answer. Records come from the package (the demo's few hundred prompts) and, when
present, from ``../shared/data`` (all of RouterBench and GSM8K), loaded in the
background so start-up stays fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from thrifty.providers.base import UpstreamError
from thrifty.providers.config import ProviderConfig, Timeouts
from thrifty.providers.replay_records import (
    DEFAULT_SHARED,
    Record,
    gsm8k_records,
    prompt_key,
    read_packaged,
    routerbench_records,
)

log = logging.getLogger("thrifty.providers.replay")

STREAM_PIECE = 16  # characters per streamed chunk


class ReplayProvider:
    """``options.source``: "packaged", "shared", or "auto" (packaged now, shared in the background)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.source = str(config.options.get("source", "auto"))
        self.shared = Path(
            config.options.get("shared_dir")
            or os.environ.get("THRIFTY_SHARED_DATA")
            or DEFAULT_SHARED
        )
        self.records: dict[tuple[str, str], Record] = {}
        self.loader: asyncio.Task[None] | None = None

    def add(self, records: Any) -> int:
        n = 0
        for r in records:
            self.records[(prompt_key(r.prompt), r.model)] = r
            n += 1
        return n

    def _load_shared(self) -> list[Record]:
        if not (self.shared / "routerbench").is_dir():
            return []
        out = list(routerbench_records(self.shared))
        if (self.shared / "routellm" / "gsm8k").is_dir():
            out.extend(gsm8k_records(self.shared))
        return out

    async def start(self) -> None:
        if self.records or self.loader is not None:
            return
        if self.source in ("packaged", "auto"):
            self.add(read_packaged())
        if self.source == "shared":
            self.add(await asyncio.to_thread(self._load_shared))
        elif self.source == "auto":

            async def load() -> None:
                try:
                    n = self.add(await asyncio.to_thread(self._load_shared))
                    if n:
                        log.info("replay: loaded %d records from %s", n, self.shared)
                except Exception as exc:  # noqa: BLE001 (the packaged records still serve)
                    log.warning("replay: could not load %s: %s", self.shared, exc)

            self.loader = asyncio.get_running_loop().create_task(load())

    def lookup(self, body: dict[str, Any]) -> Record:
        prompt = ""
        for msg in reversed(body.get("messages") or ()):
            if msg.get("role") == "user":
                content = msg.get("content")
                prompt = (
                    content
                    if isinstance(content, str)
                    else "\n".join(
                        p.get("text", "")
                        for p in content or ()
                        if isinstance(p, dict) and p.get("type") == "text"
                    )
                )
                break
        model = body.get("model", "")
        record = self.records.get((prompt_key(prompt), model))
        if record is None:
            known = any(m == model for (_, m) in self.records) or not self.records
            detail = (
                "it has no recorded answer of this model to this prompt"
                if known
                else f"it has no recordings of model '{model}'"
            )
            exc = UpstreamError(
                400,
                f"The replay provider only answers benchmark prompts it has recorded, and "
                f"{detail}. Send one of the recorded prompts (see thrifty demo) or configure "
                "a real provider.",
                retryable=False,
                type="replay_unknown_prompt",
                code="replay_unknown_prompt",
            )
            exc.try_next_model = True  # its fallback (offline-echo / local-smollm2) may answer
            raise exc
        return record

    @staticmethod
    def _usage(r: Record) -> dict[str, Any]:
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        r = self.lookup(body)
        return {
            "id": f"chatcmpl-replay-{os.urandom(8).hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": r.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.response, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(r),
        }

    async def chat_stream(
        self, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The recorded answer in small pieces, as one batch (it is all there at once)."""
        r = self.lookup(body)
        base = {
            "id": f"chatcmpl-replay-{os.urandom(8).hex()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": r.model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        batch = [chunk({"role": "assistant", "content": ""})]
        batch += [
            chunk({"content": r.response[i : i + STREAM_PIECE]})
            for i in range(0, len(r.response), STREAM_PIECE)
        ]
        batch.append(chunk({}, "stop"))
        batch.append({**base, "choices": [], "usage": self._usage(r)})
        yield batch

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        raise UpstreamError(400, "The replay provider has no embeddings.", retryable=False)

    async def close(self) -> None:
        if self.loader is not None and not self.loader.done():
            self.loader.cancel()
