"""The response caches as a pipeline stage: look up before planning, store after settling.

Which requests use a cache: the ``x-thrifty-cache`` header (exact | semantic | off), else the
requested model's route in ``[cache.routes]``, else deterministic requests (``temperature`` 0,
one choice) when ``[cache] deterministic`` is on. Answers are kept per tenant (team, else key)
and per namespace (the requested model and the models its route shares with; a routing profile
is a namespace of its own), and each API (chat completions, Anthropic messages, Responses) keeps
its own namespace. What is stored is the chat completion the pipeline produced, so a hit is
rendered in the caller's wire format like any answer, streamed or not. A hit never bypasses
policy: it is served only when the caller may use the model that produced it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from thrifty.errors import GatewayError
from thrifty.multipliers.cache import (
    CacheEntry,
    CacheError,
    CachePolicy,
    ExactCache,
    cache_mode,
    open_store,
    scope_of,
)
from thrifty.multipliers.settings import CASCADE_PROFILE, CacheSettings
from thrifty.pipeline.call import CHAT, Call
from thrifty.spend.contract import SpendError

if TYPE_CHECKING:
    from thrifty.pipeline.planner import Gateway

log = logging.getLogger("thrifty.multipliers")


class Lookup:
    """Where a request's answer is looked up and stored."""

    __slots__ = ("allowed", "key", "mode", "namespace", "scope", "ttl")

    def __init__(self, mode: str, scope: str, namespace: str, ttl: float, allowed: set[str]):
        self.mode, self.scope, self.namespace, self.ttl, self.allowed = (
            mode,
            scope,
            namespace,
            ttl,
            allowed,
        )
        self.key: str | None = None  # the exact key, once the lookup computed it


class CacheStage:
    def __init__(self, settings: CacheSettings, gateway: Gateway, cascade: list[str]) -> None:
        self.settings = settings
        self.gw = gateway
        self.cascade = cascade
        self.exact = ExactCache(
            open_store(settings.backend, gateway.config.data_dir),
            memory_bytes=int(settings.memory_mb * 1024 * 1024),
        )
        self.semantic: Any = None
        self._rebuilt = False
        self.pending = 0  # answers still being written (they are stored after the response)
        self.tasks: set[asyncio.Task] = set()
        self._routes: dict[tuple[str, bool], tuple[CachePolicy, str, frozenset[str] | None]] = {}
        if any(r.mode == "semantic" for r in settings.routes.values()):
            self._semantic()  # load the embedder now, not on a request

    # -- which cache, for whom ---------------------------------------------------------------

    def _route(self, model: str) -> tuple[CachePolicy, str, frozenset[str] | None]:
        """(policy, namespace, accepted models or None for any) for a requested model: the
        same for every request, so kept per configured model and profile."""
        profile = model == "default" or self.gw.router.is_profile(model)
        got = self._routes.get((model, profile))
        if got is None:
            got = self._route_of(model, profile)
            if profile or model in self.gw.models or model == CASCADE_PROFILE:  # bounded
                self._routes[model, profile] = got
        return got

    def _route_of(
        self, model: str, profile: bool
    ) -> tuple[CachePolicy, str, frozenset[str] | None]:
        route = self.settings.routes.get(model)
        mode = route.mode if route else None
        if mode is None and not self.settings.deterministic:
            mode = "off"
        policy = CachePolicy(
            mode=mode, ttl=(route.ttl if route and route.ttl else self.settings.ttl)
        )
        if model == CASCADE_PROFILE and self.cascade:
            return policy, "profile:" + model, frozenset(self.cascade)
        if profile:
            return policy, "profile:" + model, None  # the route itself may pick any model
        share = route.share_with if route else ()
        return policy, "|".join(sorted({model, *share})), frozenset({model, *share})

    def _allowed_models(self, call: Call, accepted: frozenset[str] | None) -> set[str]:
        """Models whose cached answers this caller may get: the route's, minus what policy forbids
        (a hit must not bypass a policy that forbids the model that produced it)."""
        models = self.gw.models
        names = accepted if accepted is not None else set(models)
        infos = [models[n].info for n in names if n in models]
        if not infos:
            return set()
        try:
            return {i.name for i in self.gw.spend.allowed(call.principal, infos)}
        except SpendError:
            return set()

    def lookup_for(self, call: Call) -> Lookup | None:
        """Whether ``call`` uses a cache (None: it does not), or a 400 for a bad header."""
        assert call.chat is not None
        body = call.chat.body
        policy, namespace, accepted = self._route(call.chat.model)
        try:
            mode = cache_mode(call.cache_header, policy, body)
        except CacheError as exc:
            raise GatewayError(400, str(exc), code="invalid_header", param="x-thrifty-cache") from None
        if mode == "off":
            return None
        if call.endpoint != CHAT:
            namespace = f"{call.endpoint}:{namespace}"  # same body, other API: its own answers
        scope = scope_of(call.principal.team_id, call.principal.key_id)
        return Lookup(mode, scope, namespace, policy.ttl, self._allowed_models(call, accepted))

    # -- lookup and store ----------------------------------------------------------------------

    async def lookup(self, call: Call, where: Lookup) -> CacheEntry | None:
        """The stored answer, or None (a cache that is down is a miss, never a failed request)."""
        if not where.allowed:
            return None
        body = call.chat.body  # type: ignore[union-attr]
        try:
            where.key = self.exact.key(where.scope, where.namespace, body)
            entry = await self.exact.lookup(
                where.scope, where.namespace, body, where.allowed, key=where.key
            )
            if entry is not None:
                call.hit = "exact"
                return entry
            if where.mode == "semantic":
                hit = await self._semantic().lookup(where.scope, where.namespace, body, where.allowed)
                if hit is not None:
                    call.hit = "semantic"
                    return hit.entry
        except Exception as exc:  # noqa: BLE001 (a cache that is down is a miss)
            log.warning(
                "response cache lookup failed (%s); serving without the cache", type(exc).__name__
            )
        return None

    def store(
        self,
        call: Call,
        where: Lookup,
        answer: dict[str, Any],
        cost: float,
        *,
        raw: bytes | None = None,
    ) -> None:
        """Store a served answer in the background (counted in :attr:`pending` until written).
        ``raw``: ``answer`` as JSON, when the caller has it already."""
        served = call.served
        if served is None or served.model is None:
            return
        usage = answer.get("usage") or {}
        entry = CacheEntry(
            raw if raw is not None else orjson.dumps(answer),
            served.model.info.name,
            served.deployment.provider if served.deployment else None,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            cost,
            time.time(),
        )
        body = call.chat.body  # type: ignore[union-attr]
        self.pending += 1
        task = asyncio.get_running_loop().create_task(self._store(where, body, entry))
        self.tasks.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task) -> None:
        self.pending -= 1
        self.tasks.discard(task)

    async def _store(self, where: Lookup, body: dict[str, Any], entry: CacheEntry) -> None:
        try:
            await self.exact.store_answer(
                where.scope, where.namespace, body, entry, where.ttl, key=where.key
            )
            if where.mode == "semantic":
                await self._semantic().store_answer(
                    where.scope, where.namespace, body, entry, where.ttl
                )
        except Exception as exc:  # noqa: BLE001 (a failed store must not fail the request; never log the request or the answer)
            log.warning("storing a cached answer failed (%s)", type(exc).__name__)

    # -- semantic index --------------------------------------------------------------------------

    def _semantic(self) -> Any:
        if self.semantic is None:
            from thrifty.multipliers.semantic import DEFAULT_THRESHOLD, SemanticCache

            self.semantic = SemanticCache(
                self.exact.store, threshold=self.settings.semantic_threshold or DEFAULT_THRESHOLD
            )
            self._rebuilt = False
        if not self._rebuilt:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return self.semantic  # at construction: rebuilt at startup or first use
            self._rebuilt = True
            task = loop.create_task(self._rebuild())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return self.semantic

    def start(self) -> None:
        """At startup: re-index the semantic cache from the store."""
        if self.semantic is not None:
            self._semantic()

    async def _rebuild(self) -> None:
        try:
            n = await self.semantic.rebuild()
            if n:
                log.info("semantic cache: %d entries re-indexed from the store", n)
        except Exception as exc:  # noqa: BLE001 (a background task: log and go on)
            log.warning(
                "semantic cache index not rebuilt (%s); it refills from new traffic",
                type(exc).__name__,
            )

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.exact.close()
