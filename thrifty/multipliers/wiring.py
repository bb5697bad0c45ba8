"""The multipliers in front of a gateway app: response caches on chat completions, and
``/v1/files`` + ``/v1/batches``.

:class:`MultiplierApp` wraps the gateway's ASGI app (``create_app(...)``) instead of living
inside it, so the gateway's hot path is untouched for requests that use no cache:

* ``POST /v1/chat/completions`` with a cache mode (header ``x-thrifty-cache``, the route's
  setting, or ``temperature: 0``): authenticate with the gateway's spend control, look up
  (exact, then semantic when asked), and on a hit answer from the cache and write a ledger
  record with ``cache_hit = true``, zero cost and the original call's tokens and prices (the
  saving). On a miss the request goes to the gateway untouched; a 200 answer is stored.
* ``/v1/files``, ``/v1/batches``: the batch API, run by a :class:`BatchRunner` started at
  lifespan startup (which resumes unfinished batches).
* ``model: "auto-cascade"``: the cascade's models in turn through the gateway (each call
  routed, admitted and billed as usual), keeping the first answer that passes
  :func:`~thrifty.multipliers.cascade.check_answer`.

Streamed requests are served from the cache on a hit (as one content chunk) and stored on a
miss (reassembled; not when the answer has tool calls). Anthropic ``/v1/messages`` calls use
the cache too (in their own namespace, so never another API's answer), except streamed ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from thrifty.gateway.app import dispatch_to_mount
from thrifty.multipliers.batch_api import batch_mounts
from thrifty.multipliers.batch_exec import GatewayExecutor
from thrifty.multipliers.batches import BatchRunner, BatchStore
from thrifty.multipliers.cache import (
    CacheEntry,
    CacheError,
    CachePolicy,
    ExactCache,
    cache_mode,
    open_store,
    scope_of,
)
from thrifty.multipliers.cascade import check_answer
from thrifty.multipliers.semantic import split_request
from thrifty.multipliers.settings import (
    CASCADE_PROFILE,
    AffinitySettings,
    BatchSettings,
    CacheSettings,
    CascadeSettings,
    load_settings,
)
from thrifty.spend import database_url as spend_database_url  # shared-state
from thrifty.spend.api import LedgerRecord, SpendError

log = logging.getLogger("thrifty.multipliers")

__all__ = ["MultiplierApp", "with_multipliers"]

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MESSAGES_PATH = (
    "/v1/messages"  # Anthropic: cached too (not streamed requests, not deferral or cascade)
)
_CASCADE_BYTES = CASCADE_PROFILE.encode()
_IDS = itertools.count(1)
_PREFIX = "req_cache_" + os.urandom(4).hex()


def _error(status: int, message: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
    )


class MultiplierApp:
    def __init__(
        self,
        inner: Any,
        *,
        cache: CacheSettings | None,
        batches: BatchSettings | None,
        cascade: CascadeSettings | None = None,
        affinity: AffinitySettings | None = None,
    ) -> None:
        self.inner = inner
        self.gw = inner.gw
        self._tasks: set[asyncio.Task] = set()
        self._pending = 0  # misses whose answer may still be stored
        self._rebuilt = False
        if affinity is not None and affinity.models:
            self.gw.affinity = build_affinity(self.gw, affinity)
        self.cascade = (
            list(cascade.models) if cascade and cascade.models else default_cascade(self.gw)
        )
        unknown = [m for m in self.cascade if m not in self.gw.models]
        if unknown:
            from thrifty.errors import UsageError

            raise UsageError(f"cascade.models: {', '.join(unknown)} not configured models")
        if self.cascade and hasattr(inner, "extra_profiles"):
            # Listed by GET /v1/models for callers whose policies permit one of its models.
            inner.extra_profiles[CASCADE_PROFILE] = ("thrifty-cascade", tuple(self.cascade))
        self.settings = cache
        self.exact: ExactCache | None = None
        self.semantic: Any = None
        if cache is not None:
            self.exact = ExactCache(open_store(cache.backend, self.gw.config.data_dir))
            if any(r.mode == "semantic" for r in cache.routes.values()):
                self._semantic()  # load the embedder now, not on a request
        self.batch_store: BatchStore | None = None
        self.runner: BatchRunner | None = None
        self.mounts: list[tuple[str, Any]] = []
        if batches is not None and batches.enabled:
            # shared-state: batches live in the spend database (where the ledger is), leased.
            self.batch_store = BatchStore(
                getattr(self.gw.spend, "db_url", None)
                or spend_database_url(self.gw.config.spend, Path(self.gw.config.data_dir))
            )
            self.runner = BatchRunner(
                self.batch_store,
                GatewayExecutor(lambda: self.gw),
                concurrency=batches.concurrency,
                poll=batches.poll,
                lease=batches.lease,  # shared-state
            )
            self.mounts = list(
                batch_mounts(
                    self.batch_store,
                    self.runner,
                    self.gw.spend.authenticate,
                    max_body_bytes=self.gw.config.max_body_bytes,
                ).items()
            )

    @property
    def pending_stores(self) -> int:
        """Answers still being written to the cache (they are stored after the response is sent)."""
        return self._pending

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if scope["method"] == "POST" and (path in CHAT_PATHS or path == MESSAGES_PATH):
                await self._chat(scope, receive, send, path == MESSAGES_PATH)
                return
            if await dispatch_to_mount(self.mounts, scope, receive, send):
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.inner(scope, receive, send)

    async def _lifespan(self, scope: dict, receive: Callable, send: Callable) -> None:
        async def send_(message: dict) -> None:
            if message["type"] == "lifespan.startup.complete":
                if self.runner is not None:
                    # Before the first request: provider batch lines take their holds again.
                    await self.runner.restore()
                    self.runner.start()  # resumes unfinished batches
                if self.semantic is not None:
                    self._semantic()  # re-indexes the semantic cache from the store
            if message["type"] == "lifespan.shutdown.complete":
                await self.close()
            await send(message)

        await self.inner(scope, receive, send_)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.close()
        if self.batch_store is not None:
            await self.batch_store.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.exact is not None:
            await self.exact.close()

    # -- cache -----------------------------------------------------------------------------

    def _route(self, model: str) -> tuple[CachePolicy, str, set[str] | None]:
        """(policy, namespace, accepted models or None for any) for a requested model."""
        assert self.settings is not None
        route = self.settings.routes.get(model)
        mode = route.mode if route else None
        if mode is None and not self.settings.deterministic:
            mode = "off"
        policy = CachePolicy(
            mode=mode, ttl=(route.ttl if route and route.ttl else self.settings.ttl)
        )
        if model == CASCADE_PROFILE and self.cascade:
            return policy, "profile:" + model, set(self.cascade)
        if model == "default" or self.gw.router.is_profile(model):
            return policy, "profile:" + model, None  # the route itself may pick any model
        share = route.share_with if route else ()
        namespace = "|".join(sorted({model, *share}))
        return policy, namespace, {model, *share}

    def _semantic(self) -> Any:
        if self.semantic is None:
            from thrifty.multipliers.semantic import DEFAULT_THRESHOLD, SemanticCache

            assert self.exact is not None and self.settings is not None
            self.semantic = SemanticCache(
                self.exact.store, threshold=self.settings.semantic_threshold or DEFAULT_THRESHOLD
            )
            self._rebuilt = False
        if not self._rebuilt:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return self.semantic  # at construction: rebuilt at lifespan startup or first use
            self._rebuilt = True
            task = loop.create_task(self._rebuild())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self.semantic

    async def _rebuild(self) -> None:
        """Restore the semantic index from the cache store (after a restart)."""
        try:
            n = await self.semantic.rebuild()
            if n:
                log.info("semantic cache: %d entries re-indexed from the store", n)
        except Exception as exc:  # noqa: BLE001 (a background task: log and go on)
            log.warning(
                "semantic cache index not rebuilt (%s); it refills from new traffic",
                type(exc).__name__,
            )

    async def _chat(
        self, scope: dict, receive: Callable, send: Callable, anthropic: bool = False
    ) -> None:
        chunks, more = [], True
        size, limit = 0, self.gw.config.max_body_bytes
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
            if size > limit:  # let the gateway refuse it in its own words
                break
        raw = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": more}
            return await receive()

        header = auth = defer = None
        for name, value in scope["headers"]:
            if name == b"x-thrifty-cache":
                header = value.decode("latin-1")
            elif name == b"x-thrifty-defer":
                defer = value.decode("latin-1").strip().lower()
            elif name == b"authorization" or (name == b"x-api-key" and auth is None):
                auth = value.decode("latin-1")
        if anthropic and (
            self.exact is None or defer is not None or b'"stream":true' in raw.replace(b" ", b"")
        ):
            await self.inner(scope, replay, send)  # only non-streamed Messages calls use the cache
            return
        if self.exact is None and defer is None and _CASCADE_BYTES not in raw:
            await self.inner(
                scope, replay, send
            )  # nothing for the multipliers to do: no second parse
            return
        try:
            body = orjson.loads(raw) if not more else None
        except orjson.JSONDecodeError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not isinstance(body.get("messages"), list):
            await self.inner(scope, replay, send)  # the gateway explains what is wrong
            return
        if defer is not None and defer not in ("0", "false", "no"):
            await self._defer(send, auth, body, defer)
            return
        if self.exact is None:
            await self._downstream(scope, replay, send, body)
            return
        policy, namespace, accepted = self._route(model)
        if anthropic:
            namespace = (
                "anthropic:" + namespace
            )  # same body, other API: never the other format's answer
        try:
            mode = cache_mode(header, policy, body)
        except CacheError as exc:
            error = (
                orjson.dumps(
                    {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": str(exc)},
                    }
                )
                if anthropic
                else _error(400, str(exc), "invalid_header", "x-thrifty-cache")
            )
            await _respond(send, 400, error, [])
            return
        if mode == "off":
            await self._downstream(scope, replay, send, body, anthropic)
            return
        try:
            principal = await self.gw.spend.authenticate(auth)
        except SpendError:
            await self.inner(scope, replay, send)  # the gateway renders the auth error
            return
        t0, ts = time.perf_counter(), time.time()
        cache_scope = scope_of(principal.team_id, principal.key_id)
        allowed = self._allowed_models(principal, accepted)
        entry, kind = None, ""
        if allowed:
            try:
                entry = await self.exact.lookup(cache_scope, namespace, body, allowed)  # type: ignore[union-attr]
                kind = "exact"
                if entry is None and mode == "semantic":
                    hit = await self._semantic().lookup(cache_scope, namespace, body, allowed)
                    entry, kind = (hit.entry, "semantic") if hit else (None, "")
            except Exception as exc:  # noqa: BLE001 (a cache that is down is a miss, never a failed request)
                log.warning(
                    "response cache lookup failed (%s); serving without the cache",
                    type(exc).__name__,
                )
                entry = None
        if entry is not None:
            await self._serve_hit(send, entry, kind, body, principal, model, ts, t0, anthropic)
            return
        await self._miss(
            scope, replay, send, body, mode, cache_scope, namespace, policy.ttl, anthropic
        )

    def _allowed_models(self, principal: Any, accepted: set[str] | None) -> set[str]:
        """Models whose cached answers this caller may get: the route's, minus what policy forbids
        (a hit must not bypass a policy that forbids the model that produced it)."""
        names = accepted if accepted is not None else set(self.gw.models)
        infos = [self.gw.models[n].info for n in names if n in self.gw.models]
        if not infos:
            return set()
        try:
            return {i.name for i in self.gw.spend.allowed(principal, infos)}
        except SpendError:
            return set()

    async def _serve_hit(
        self,
        send: Callable,
        entry: CacheEntry,
        kind: str,
        body: dict,
        principal: Any,
        requested: str,
        ts: float,
        t0: float,
        anthropic: bool = False,
    ) -> None:
        request_id = f"{_PREFIX}{next(_IDS):08x}"
        mc = self.gw.models.get(entry.model)
        info = mc.info if mc else None
        saved = entry.cost_usd
        from thrifty.providers.base import Usage

        frontier = self.gw.frontier_cost(Usage(entry.prompt_tokens, entry.completion_tokens))
        record = LedgerRecord.billed_to(
            principal,
            request_id=request_id,
            ts=ts,
            endpoint="messages" if anthropic else "chat.completions",
            requested_model=requested,
            served_model=entry.model,
            provider="cache",
            route_reason=f"{kind} cache hit; saved ${saved:.9f}",
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            input_price=(info.input_cost_per_token or 0.0) if info else 0.0,
            output_price=(info.output_cost_per_token or 0.0) if info else 0.0,
            cost_usd=0.0,
            frontier_cost_usd=frontier,
            latency_ms=(time.perf_counter() - t0) * 1000,
            stream=bool(body.get("stream")),
            cache_hit=True,
        )
        try:
            await self.gw.spend.settle(None, record)
        except Exception as exc:  # noqa: BLE001 (as the gateway does: what the ledger cannot record is not served)
            log.warning("recording cache hit %s failed (%s)", request_id, type(exc).__name__)
            message = "The request could not be recorded in the ledger, so it was not completed. Please retry."
            error = (
                orjson.dumps(
                    {"type": "error", "error": {"type": "ledger_error", "message": message}}
                )
                if anthropic
                else orjson.dumps(
                    {
                        "error": {
                            "message": message,
                            "type": "ledger_error",
                            "param": None,
                            "code": "ledger_unavailable",
                        }
                    }
                )
            )
            await _respond(send, 503, error, [(b"x-request-id", request_id.encode())])
            return
        headers = [
            (b"x-request-id", request_id.encode()),
            (b"x-thrifty-cache", f"hit-{kind}".encode()),
            (b"x-thrifty-model", entry.model.encode()),
            (b"x-thrifty-provider", b"cache"),
            (b"x-thrifty-cost-usd", b"0.000000000"),
            (b"x-thrifty-saved-usd", f"{saved:.9f}".encode()),
            (b"x-thrifty-frontier-cost-usd", f"{frontier:.9f}".encode()),
        ]
        if body.get("stream"):
            await _respond(
                send,
                200,
                _as_stream(
                    entry.body, bool((body.get("stream_options") or {}).get("include_usage"))
                ),
                headers
                + [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            )
            return
        await _respond(send, 200, entry.body, headers + [(b"content-type", b"application/json")])

    async def _miss(
        self,
        scope: dict,
        receive: Callable,
        send: Callable,
        body: dict,
        mode: str,
        cache_scope: str,
        namespace: str,
        ttl: float,
        anthropic: bool = False,
    ) -> None:
        """Forward a miss, then store a 200 answer in the background; counted in
        ``pending_stores`` from the forward until the store is done."""
        self._pending += 1
        try:
            entry = await self._forward(scope, receive, send, body, anthropic)
        except BaseException:
            self._pending -= 1
            raise
        if entry is None:
            self._pending -= 1
            return
        task = asyncio.get_running_loop().create_task(
            self._store(mode, cache_scope, namespace, body, entry, ttl)
        )
        self._tasks.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task) -> None:
        self._pending -= 1
        self._tasks.discard(task)

    async def _forward(
        self, scope: dict, receive: Callable, send: Callable, body: dict, anthropic: bool = False
    ) -> CacheEntry | None:
        """Send the request to the gateway, passing its response through; the answer to cache
        (a 200 with usage), if any."""
        status, headers, parts = 0, {}, []

        async def capture(message: dict) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-thrifty-cache", b"miss")
                ]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
            await send(message)

        await self._downstream(scope, receive, capture, body, anthropic)
        served = headers.get(b"x-thrifty-model")
        if status != 200 or served is None:
            return None
        out = b"".join(parts)
        try:
            if body.get("stream"):
                from thrifty.gateway.schemas import ChatRequest

                out, cost = _from_stream(out, ChatRequest(dict(body)).prompt_tokens)
            else:
                cost = float(headers.get(b"x-thrifty-cost-usd", b"0") or 0)
            usage = orjson.loads(out).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError, ValueError, TypeError, KeyError):
            return None
        prompt_tokens = usage.get("input_tokens" if anthropic else "prompt_tokens") or 0
        completion_tokens = usage.get("output_tokens" if anthropic else "completion_tokens") or 0
        return CacheEntry(
            out,
            served.decode(),
            (headers.get(b"x-thrifty-provider") or b"").decode() or None,
            int(prompt_tokens),
            int(completion_tokens),
            cost,
            time.time(),
        )

    async def _store(
        self, mode: str, cache_scope: str, namespace: str, body: dict, entry: CacheEntry, ttl: float
    ) -> None:
        try:
            await self.exact.store_answer(cache_scope, namespace, body, entry, ttl)  # type: ignore[union-attr]
            if mode == "semantic":
                await self._semantic().store_answer(cache_scope, namespace, body, entry, ttl)
        except Exception as exc:  # noqa: BLE001 (a failed store must not fail the request; never log the request or the answer)
            log.warning("storing a cached answer failed (%s)", type(exc).__name__)

    # -- deferral --------------------------------------------------------------------------

    async def _defer(self, send: Callable, auth: str | None, body: dict, value: str) -> None:
        """``x-thrifty-defer: batch``: the call becomes a one-request batch; the answer is the
        batch object (202), to poll at ``/v1/batches/{id}`` like any other."""
        if value not in ("batch", "1", "true", "yes"):
            await _respond(
                send,
                400,
                _error(
                    400,
                    f"Invalid x-thrifty-defer header {value!r}: expected 'batch'.",
                    "invalid_header",
                    "x-thrifty-defer",
                ),
                [],
            )
            return
        if self.batch_store is None or self.runner is None:
            await _respond(
                send,
                400,
                _error(
                    400,
                    "Deferred calls need batches, which are disabled on this "
                    "gateway ([batches] enabled = false).",
                    "batches_disabled",
                ),
                [],
            )
            return
        try:
            principal = await self.gw.spend.authenticate(auth)
        except SpendError as exc:
            await _respond(
                send,
                exc.status,
                orjson.dumps(
                    {
                        "error": {
                            "message": exc.message,
                            "type": exc.type,
                            "param": None,
                            "code": exc.code,
                        }
                    }
                ),
                [],
            )
            return
        owner = scope_of(principal.team_id, principal.key_id)
        line = orjson.dumps(
            {
                "custom_id": "deferred",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {k: v for k, v in body.items() if k not in ("stream", "stream_options")},
            }
        )
        f = await self.batch_store.create_file(owner, "batch", "deferred.jsonl", line)
        fields = {
            "key_id": principal.key_id,
            "user_id": principal.user_id,
            "team_id": principal.team_id,
            "tags": list(principal.tags),
            "routing_profile": principal.routing_profile,
        }
        batch = await self.batch_store.create_batch(
            owner, fields, f["id"], "/v1/chat/completions", "24h", {"thrifty": "deferred call"}
        )
        self.runner.start()
        self.runner.wake()
        await _respond(
            send,
            202,
            orjson.dumps(batch),
            [(b"x-thrifty-defer", b"batch"), (b"location", f"/v1/batches/{batch['id']}".encode())],
        )

    # -- cascade ---------------------------------------------------------------------------

    async def _downstream(
        self, scope: dict, receive: Callable, send: Callable, body: dict, anthropic: bool = False
    ) -> None:
        if body.get("model") == CASCADE_PROFILE and self.cascade and not anthropic:
            await self._cascade(scope, send, body)
        else:
            await self.inner(scope, receive, send)

    async def _call(self, scope: dict, body: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request through the gateway, its response collected."""
        raw = orjson.dumps(body)
        sub = dict(scope)
        sub["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"] + [
            (b"content-length", str(len(raw)).encode())
        ]
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return {"type": "http.disconnect"}

        status, headers, parts = 0, [], []

        async def collect(message: dict) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.inner(sub, receive, collect)
        return status, headers, b"".join(parts)

    async def _cascade(self, scope: dict, send: Callable, body: dict) -> None:
        """Each model in turn until an answer passes the check; every call is billed. The
        response carries the kept model's headers plus ``x-thrifty-cascade``."""
        _, prompt = split_request(body)
        stream = bool(body.get("stream"))
        base = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        trail: list[str] = []
        for i, model in enumerate(self.cascade):
            status, headers, out = await self._call(scope, {**base, "model": model})
            last = i == len(self.cascade) - 1
            if status == 200:
                try:
                    content = orjson.loads(out)["choices"][0]["message"].get("content") or ""
                except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
                    content = ""
                passed = check_answer(prompt, content)
                trail.append(f"{model}:{'pass' if passed else 'fail'}")
                if not (passed or last):
                    continue
            elif status in (401, 403, 429) or (400 <= status < 500 and status != 404) or last:
                trail.append(f"{model}:{status}")
                # The caller's own problem (auth, budget, bad request) or the end of the line.
            else:
                trail.append(f"{model}:{status}")
                continue
            headers = [(k, v) for k, v in headers if k not in (b"content-length", b"content-type")]
            headers.append((b"x-thrifty-cascade", " > ".join(trail).encode()))
            if stream and status == 200:
                await _respond(
                    send,
                    200,
                    _as_stream(out, bool((body.get("stream_options") or {}).get("include_usage"))),
                    headers
                    + [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                )
            else:
                await _respond(
                    send, status, out, headers + [(b"content-type", b"application/json")]
                )
            return


def build_affinity(gw: Any, settings: AffinitySettings) -> Any:
    """The gateway's prefix-affinity balancer (read by ``Gateway._attempts``)."""
    from thrifty.errors import UsageError
    from thrifty.multipliers.affinity import DeploymentAffinity

    bad = [m for m in settings.models if m not in gw.models or len(gw.models[m].deployments) < 2]
    if bad:
        raise UsageError(
            f"affinity.models: {', '.join(bad)} must be configured models with two or more deployments"
        )
    return DeploymentAffinity(
        {m: gw.models[m].deployments for m in settings.models},
        load_factor=settings.load_factor,
        key_chars=settings.key_chars,
    )


def default_cascade(gw: Any) -> list[str]:
    """Without ``[cascade] models``: the frontier model last; first, the cheapest routable chat
    model whose accuracy in the router's training data is at least 80% of the frontier's (on
    the packaged router: mixtral-8x7b-chat, the cascade measured in docs/multipliers.md), else
    the cheapest routable chat model."""
    chat = {
        name: mc.info.input_cost_per_token + mc.info.output_cost_per_token
        for name, mc in gw.models.items()
        if mc.mode == "chat" and mc.route and mc.info.priced
    }
    if not chat:
        return []
    strong = (
        gw.config.frontier_model
        if gw.config.frontier_model in gw.models
        else max(chat, key=chat.get)
    )
    meta = getattr(getattr(gw.router, "router", None), "meta", None) or {}
    accuracy = meta.get("accuracy_per_model") or {}
    floor = 0.8 * accuracy.get(strong, 2.0)  # no accuracy for the frontier: no model qualifies
    good = [n for n in chat if n != strong and accuracy.get(n, 0.0) >= floor]
    cheap = min(good or [n for n in chat if n != strong] or [strong], key=chat.get)
    return [cheap, strong] if cheap != strong else []


def _from_stream(sse: bytes, prompt_estimate: int) -> tuple[bytes, float]:
    """A streamed answer (as the gateway sent it) reassembled into a chat completion, and its
    cost from the gateway's closing comment. Raises ValueError for what is not stored: tool
    calls, broken streams. Without a usage chunk, tokens are the gateway's estimates."""
    doc: dict[str, Any] = {}
    texts: dict[int, list[str]] = {}
    finish: dict[int, Any] = {}
    usage = None
    cost = 0.0
    for line in sse.split(b"\n"):
        if line.startswith(b": thrifty cost_usd="):
            cost = float(line.split(b"=", 1)[1].split(b" ", 1)[0])
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = orjson.loads(line[6:])
        if "error" in chunk:
            raise ValueError("broken stream")
        doc = doc or chunk
        usage = chunk.get("usage") or usage
        for c in chunk.get("choices") or ():
            delta = c.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                raise ValueError("tool calls are not stored from streams")
            texts.setdefault(c.get("index", 0), []).append(delta.get("content") or "")
            if c.get("finish_reason"):
                finish[c.get("index", 0)] = c["finish_reason"]
    if not texts:
        raise ValueError("empty stream")
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(t)},
            "finish_reason": finish.get(i, "stop"),
        }
        for i, t in sorted(texts.items())
    ]
    if usage is None:
        completion = sum(len("".join(t)) for t in texts.values()) // 4 + 1
        usage = {
            "prompt_tokens": prompt_estimate,
            "completion_tokens": completion,
            "total_tokens": prompt_estimate + completion,
        }
    out = {
        "id": doc.get("id"),
        "object": "chat.completion",
        "created": doc.get("created"),
        "model": doc.get("model"),
        "choices": choices,
        "usage": usage,
    }
    return orjson.dumps(out), cost


def _as_stream(body: bytes, include_usage: bool) -> bytes:
    """A cached completion as an OpenAI stream: one chunk per choice, finish, usage, [DONE]."""
    doc = orjson.loads(body)
    base = {
        "id": doc.get("id"),
        "object": "chat.completion.chunk",
        "created": doc.get("created"),
        "model": doc.get("model"),
    }
    out = b""
    for c in doc.get("choices") or ():
        msg = c.get("message") or {}
        delta = {"role": msg.get("role", "assistant"), "content": msg.get("content")}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{**t, "index": i} for i, t in enumerate(msg["tool_calls"])]
        out += (
            b"data: "
            + orjson.dumps(
                {
                    **base,
                    "choices": [
                        {"index": c.get("index", 0), "delta": delta, "finish_reason": None}
                    ],
                }
            )
            + b"\n\n"
        )
        out += (
            b"data: "
            + orjson.dumps(
                {
                    **base,
                    "choices": [
                        {
                            "index": c.get("index", 0),
                            "delta": {},
                            "finish_reason": c.get("finish_reason"),
                        }
                    ],
                }
            )
            + b"\n\n"
        )
    if include_usage and doc.get("usage"):
        out += b"data: " + orjson.dumps({**base, "choices": [], "usage": doc["usage"]}) + b"\n\n"
    return out + b"data: [DONE]\n\n"


async def _respond(
    send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    if not any(k == b"content-type" for k, _ in headers):
        headers = headers + [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def with_multipliers(app: Any, config_path: str | Path | None = None) -> Any:
    """Wrap a gateway app with the multipliers its config file asks for."""
    cache, batches, cascade, affinity = load_settings(config_path)
    return MultiplierApp(app, cache=cache, batches=batches, cascade=cascade, affinity=affinity)
