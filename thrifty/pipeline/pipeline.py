"""The request pipeline, independent of HTTP.

One :class:`Call` goes through these stages, in this order (docs/architecture.md):

1. deferral (``x-thrifty-defer: batch``): the call becomes a one-line batch;
2. cache lookup (exact, then semantic): a hit is billed at zero cost and answered;
3. the ``auto-cascade`` profile: its models in turn, each step a billed call of its own;
4. plan: resolve or route the model, apply policy and capabilities, bound the cost
   (:meth:`thrifty.pipeline.planner.Gateway.plan_chat`; the routing decision is made there);
5. admit: rate limits, then hold the maximum cost on every budget (spend control);
6. call upstream, with prefix affinity, retries, breakers and fallbacks
   (:meth:`thrifty.pipeline.planner.Gateway.chat`);
7. bill: price the usage and write the ledger record, settling the hold
   (:meth:`thrifty.pipeline.billing.Billing.bill`, the one billing path);
8. cache store, in the background;
9. the judge (``[judge]``): a sampled share of routed answers graded in the background, each
   grade a call of its own (:mod:`thrifty.pipeline.judge_stage`).

A refused request (policy, budget, a bad body, an unknown model) is billed too: a ledger
record of zero cost with its status and reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from thrifty.config import Deployment
from thrifty.errors import GatewayError, ThriftyError
from thrifty.multipliers.settings import CASCADE_PROFILE
from thrifty.pipeline.billing import Billed, Billing, Charge
from thrifty.pipeline.call import CHAT, Call
from thrifty.pipeline.planner import Served
from thrifty.pipeline.schemas import ChatRequest
from thrifty.pipeline.stream import AnswerStream, completion_of, from_body
from thrifty.providers.base import UpstreamError, Usage
from thrifty.spend.contract import BudgetExceeded

if TYPE_CHECKING:
    from thrifty.pipeline.cache_stage import CacheStage, Lookup
    from thrifty.pipeline.cascade_stage import CascadeStage
    from thrifty.pipeline.defer_stage import DeferStage
    from thrifty.pipeline.judge_stage import JudgeStage
    from thrifty.pipeline.planner import Gateway

log = logging.getLogger("thrifty.gateway")


@dataclass(slots=True)
class Answer:
    """A complete answer: an OpenAI chat completion (or embeddings) body and what it cost.

    ``raw``: the body as JSON when the answer arrived that way (a cache hit); then the body is
    parsed only if something reads it, and an OpenAI-format reply sends ``raw`` as it is."""

    parsed: dict[str, Any] | None
    usage: Usage
    cost_usd: float
    frontier_cost_usd: float
    raw: bytes | None = None

    @property
    def body(self) -> dict[str, Any]:
        if self.parsed is None:
            self.parsed = orjson.loads(self.raw)  # type: ignore[arg-type]
        return self.parsed

    def json(self) -> bytes:
        """The body as JSON: ``raw`` while nothing has read (and so could have changed) the body."""
        return self.raw if self.parsed is None and self.raw is not None else orjson.dumps(self.parsed)


@dataclass(slots=True)
class Deferred:
    """The call was deferred: the batch object that will run it."""

    batch: dict[str, Any]


# Ledger flags that already say the charge is not the measured cost: kept as they are.
_CHARGED_FLAGS = ("client_disconnected", "hold_exhausted")


def usage_of(body: dict[str, Any] | None, fallback_prompt: int) -> Usage:
    usage = Usage.from_openai((body or {}).get("usage"))
    return usage if usage is not None else Usage(fallback_prompt, 0)


def upstream_error(exc: UpstreamError) -> GatewayError:
    """Upstream failures as the client sees them: its 4xx as is, otherwise 502/503/504; a 429
    or 503 whose ``Retry-After`` was too long to wait for is passed on with it."""
    if exc.type == "replay_unknown_prompt":
        return GatewayError(exc.status, exc.message, code=exc.code or exc.type)
    if exc.retry_after is not None and exc.status in (429, 503):
        limited = exc.status == 429
        return GatewayError(
            exc.status,
            f"Upstream {'rate limited' if limited else 'unavailable'}: {exc.message}",
            type="rate_limit_error" if limited else "api_error",
            code="upstream_rate_limited" if limited else "upstream_unavailable",
            headers={"Retry-After": str(math.ceil(exc.retry_after))},
        )
    if 400 <= exc.status < 500 and exc.status not in (408, 429):
        return GatewayError(
            exc.status, f"Upstream rejected the request: {exc.message}", code="upstream_error"
        )
    status = 504 if exc.type == "timeout" else 503 if exc.status in (429, 503) else 502
    return GatewayError(
        status,
        f"Upstream failed after retries and fallbacks: {exc.message}",
        type="api_error",
        code=exc.type,
    )


class Pipeline:
    def __init__(
        self,
        gateway: Gateway,
        billing: Billing,
        *,
        cache: CacheStage | None = None,
        cascade: CascadeStage | None = None,
        defer: DeferStage | None = None,
        judge: JudgeStage | None = None,
    ) -> None:
        self.gw = gateway
        self.billing = billing
        self.cache = cache
        self.cascade = cascade
        self.defer = defer
        self.judge = judge

    # -- the stages ----------------------------------------------------------------------------

    async def run(self, call: Call, client_body: dict[str, Any] | None = None) -> Any:
        """Serve a chat-like call (chat completions, messages, responses): an :class:`Answer`,
        an :class:`AnswerStream` or a :class:`Deferred`. Raises a ``ThriftyError`` for what the
        client must be told (settled first: every request is in the ledger)."""
        return await self._settled(call, self._run(call, client_body))

    async def _settled(self, call: Call, work: Awaitable[Any]) -> Any:
        """``work``'s result; any way it ends without one is settled for ``call`` first."""
        try:
            return await work
        except ThriftyError as exc:
            err = upstream_error(exc) if isinstance(exc, UpstreamError) else exc
            await self.refused(call, err, exc.type)
            raise err from None
        except asyncio.CancelledError:
            await asyncio.shield(self.abandoned(call))
            raise

    async def _run(self, call: Call, client_body: dict[str, Any] | None) -> Any:
        req = call.chat
        assert req is not None
        if call.defer is not None:
            if self.defer is None:
                raise GatewayError(
                    400,
                    "Deferred calls need batches, which are disabled on this gateway "
                    "([batches] enabled = false).",
                    code="batches_disabled",
                )
            return Deferred(await self.defer.submit(call, client_body or req.body))
        where: Lookup | None = None
        if self.cache is not None and not call.batch_line:
            where = self.cache.lookup_for(call)
            if where is not None:
                entry = await self.cache.lookup(call, where)
                if entry is not None:
                    self.gw.metrics.cache.inc((call.hit or "exact",))
                    self.gw.metrics.cache_saved.inc((), entry.cost_usd)
                    return await self._hit(call, entry)
                call.hit = "miss"
                self.gw.metrics.cache.inc(("miss",))
        if req.model == CASCADE_PROFILE and self.cascade is not None and not call.batch_line:
            kept, body, cost, frontier = await self.cascade.run(call, self._step_call, self._step)
            call.request_id, call.plan, call.served = kept.request_id, kept.plan, kept.served
            call.settled = True
            if where is not None:
                self.cache.store(call, where, body, cost)  # type: ignore[union-attr]
            usage = usage_of(body, req.prompt_tokens)
            if req.stream:
                return self._replayed(call, body, usage, cost, frontier)
            return Answer(body, usage, cost, frontier)
        if req.stream:
            return await self._live_stream(call, where)
        answer = await self._live(call)
        if self.judge is not None and self.judge.wants(call):
            self.judge.submit(call, answer.body)  # billed already; graded in the background
        if where is not None:
            raw = orjson.dumps(answer.body)
            self.cache.store(call, where, answer.body, answer.cost_usd, raw=raw)  # type: ignore[union-attr]
            if call.endpoint == CHAT:  # sent as stored: serialised once, not twice
                answer = Answer(None, answer.usage, answer.cost_usd, answer.frontier_cost_usd, raw=raw)
        return answer

    async def own_call(self, call: Call) -> Answer:
        """A non-streamed call the gateway makes on its own account (the judge's), for
        ``call.principal``: planned, admitted, called and billed like any, refusals settled;
        no cache, cascade or deferral."""
        return await self._settled(call, self._live(call))

    async def plan_admit(self, call: Call) -> None:
        req = call.chat
        assert req is not None
        call.plan = self.gw.plan_chat(call.principal, req)
        try:
            call.reservation = await self._admit(call)
        except BudgetExceeded:
            if call.plan.route is None or not call.plan.route.explored:
                raise
            # Exploration never costs a caller a refusal: the best estimate instead, if it fits.
            call.plan = self.gw.plan_chat(call.principal, req, explore=False)
            call.reservation = await self._admit(call)

    async def _admit(self, call: Call) -> Any:
        assert call.plan is not None
        return await self.gw.spend.admit(
            call.principal,
            call.plan.chain[0].info,
            prompt_tokens=call.plan.prompt_tokens,
            max_cost_usd=call.plan.max_cost_usd,
            # Charged under its id if this process dies holding it; a batch line's is not: its
            # batch's next runner runs or bills the line again.
            request_id=None if call.batch_line else call.request_id,
        )

    async def _live(self, call: Call) -> Answer:
        await self.plan_admit(call)
        call.served = Served()
        assert call.plan is not None and call.chat is not None
        body = await self.gw.chat(call.plan, call.chat, call.served)
        usage = usage_of(body, call.plan.prompt_tokens)
        cost, frontier = await self.settle(call, 200, usage, None)
        return Answer(body, usage, cost, frontier)

    async def _live_stream(self, call: Call, where: Lookup | None) -> AnswerStream:
        await self.plan_admit(call)
        call.served = Served()
        call.stream = True
        plan, req = call.plan, call.chat
        assert plan is not None and req is not None
        first, rest = await self.gw.chat_stream(plan, req, call.served)

        async def settle(status: int, usage: Usage, error_type: str | None) -> tuple[float, float]:
            return await self.settle(call, status, usage, error_type)

        on_complete = None
        judge = self.judge if self.judge is not None and self.judge.wants(call) else None
        if where is not None or judge is not None:
            cache = self.cache

            def on_complete(chunks: list[dict[str, Any]], usage: Usage) -> None:
                # Once the whole answer was relayed and billed (a broken or stopped stream is not).
                answer = completion_of(chunks, usage)
                if answer is None:
                    return
                if where is not None and cache is not None:
                    cache.store(call, where, answer, stream.cost)
                if judge is not None:
                    judge.submit(call, answer)

        stream = AnswerStream(
            first,
            rest,
            prompt_tokens=plan.prompt_tokens,
            max_output_tokens=self._output_bound(call),
            settle=settle,
            on_complete=on_complete,
        )
        return stream

    def _output_bound(self, call: Call) -> int:
        """How many output tokens the budget hold covers on the model that answers: past that, a
        stream is stopped (an upstream that ignores ``max_tokens`` would overrun the hold)."""
        plan, served = call.plan, call.served
        if plan is None or served is None or served.model is None:
            return 0
        info = served.model.info
        out_price = info.output_cost_per_token or 0.0
        if out_price <= 0:
            return 0
        prompt_cost = plan.prompt_tokens * (info.input_cost_per_token or 0.0)
        bound = int((plan.max_cost_usd - prompt_cost) / out_price)
        return max(bound, plan.max_output_tokens, 1)

    def _replayed(
        self, call: Call, body: dict[str, Any], usage: Usage, cost: float, frontier: float
    ) -> AnswerStream:
        """A complete answer (a cache hit, a cascade's kept answer) as a stream, already billed."""

        async def settled(status: int, u: Usage, error_type: str | None) -> tuple[float, float]:
            return cost, frontier

        stream = AnswerStream(
            None,
            from_body(body),
            prompt_tokens=usage.prompt_tokens,
            max_output_tokens=0,
            settle=settled,
        )
        stream.usage, stream.usage_reported = usage, True
        return stream

    async def _hit(self, call: Call, entry: Any) -> Answer | AnswerStream:
        """Answer from the cache: a ledger record with ``cache_hit``, zero cost, and the
        original call's tokens and prices (the saving)."""
        mc = self.gw.models.get(entry.model)
        usage = Usage(entry.prompt_tokens, entry.completion_tokens)
        call.saved_usd = entry.cost_usd
        charge = Charge(
            call.principal,
            call.request_id,
            call.ts,
            call.endpoint,
            call.model,
            200,
            call.latency_ms(),
            info=mc.info if mc is not None else None,
            provider="cache",
            usage=usage,
            reason=f"{call.hit} cache hit; saved ${entry.cost_usd:.9f}",
            stream=call.stream or bool(call.chat and call.chat.stream),
            cache_hit=True,
        )
        billed = await self.billing.bill(charge, None)
        call.settled = True
        self._hit_served(call, entry, mc)
        frontier = billed.frontier_cost_usd
        if call.chat is not None and call.chat.stream:
            return self._replayed(call, orjson.loads(entry.body), usage, 0.0, frontier)
        return Answer(None, usage, 0.0, frontier, raw=entry.body)  # sent as stored

    @staticmethod
    def _hit_served(call: Call, entry: Any, mc: Any) -> None:
        call.served = Served(mc, Deployment("cache", entry.model))

    # -- cascade steps ---------------------------------------------------------------------------

    @staticmethod
    def _step_call(parent: Call, model: str) -> Call:
        sub = Call(parent.endpoint, parent.principal)
        assert parent.chat is not None
        body = {
            k: v for k, v in parent.chat.body.items() if k not in ("stream", "stream_options")
        }
        body["model"] = model
        sub.chat = ChatRequest(body)
        return sub

    async def _step(self, sub: Call) -> tuple[dict[str, Any], float, float]:
        try:
            answer = await self._live(sub)
        except ThriftyError as exc:
            err = upstream_error(exc) if isinstance(exc, UpstreamError) else exc
            await self.refused(sub, err, exc.type)
            raise err from None
        return answer.body, answer.cost_usd, answer.frontier_cost_usd

    # -- embeddings ------------------------------------------------------------------------------

    async def embeddings(self, call: Call) -> Answer:
        return await self._settled(call, self._embeddings(call))

    async def _embeddings(self, call: Call) -> Answer:
        req = call.embeddings
        assert req is not None
        call.plan = self.gw.plan_embeddings(
            call.principal, req.model, req.prompt_tokens, req.prompt_tokens_max
        )
        call.reservation = await self.gw.spend.admit(
            call.principal,
            call.plan.chain[0].info,
            prompt_tokens=call.plan.prompt_tokens,
            max_cost_usd=call.plan.max_cost_usd,
            request_id=call.request_id,
        )
        call.served = Served()
        result = await self.gw.embeddings(call.plan, req.body, call.served)
        usage = usage_of(result, req.prompt_tokens)
        cost, frontier = await self.settle(call, 200, usage, None)
        return Answer(result, usage, cost, frontier)

    # -- settling --------------------------------------------------------------------------------

    def charge_of(
        self, call: Call, status: int, usage: Usage | None, error_type: str | None
    ) -> Charge:
        served, plan = call.served, call.plan
        info = served.model.info if served is not None and served.model is not None else None
        charge = Charge(
            call.principal,
            call.request_id,
            call.ts,
            call.endpoint,
            plan.requested if plan is not None else call.model,
            status,
            call.latency_ms(),
            info=info,
            provider=served.deployment.provider
            if served is not None and served.deployment is not None
            else None,
            usage=usage,
            reason=plan.reason if plan is not None else None,
            error_type=error_type,
            retries=served.retries if served is not None else 0,
            stream=call.stream,
            scores=plan.scores if plan is not None else None,
            route=plan.route if plan is not None else None,
            batch=call.batch_line,
        )
        if call.purpose:
            charge.reason = f"{call.purpose}; {charge.reason}" if charge.reason else call.purpose
        if served is not None and served.unknown_attempts:
            # Attempts the upstream got and never answered: charged their upper bound, flagged.
            charge.extra_cost_usd = served.unknown_cost_usd
            n = served.unknown_attempts
            charge.reason = (
                f"{charge.reason or ''}; {n} attempt{'s' if n > 1 else ''} reached the upstream "
                f"unanswered: charged ${served.unknown_cost_usd:.9f}, the most "
                f"{'they' if n > 1 else 'it'} could cost"
            ).lstrip("; ")
            if error_type not in _CHARGED_FLAGS:
                charge.error_type = "cost_estimated"
        return charge

    async def settle(
        self, call: Call, status: int, usage: Usage | None, error_type: str | None
    ) -> tuple[float, float]:
        """Bill ``call`` once (a second settle of the same call returns its prices only)."""
        if call.settled:
            charge = self.charge_of(call, status, usage, error_type)
            _, cost, frontier = self.billing.record_of(charge)
            return cost, frontier
        call.settled = True
        billed: Billed = await self.billing.bill(
            self.charge_of(call, status, usage, error_type), call.reservation
        )
        return billed.cost_usd, billed.frontier_cost_usd

    async def refused(self, call: Call, exc: ThriftyError, error_type: str | None = None) -> None:
        """A request that ends in an error before or instead of an answer: in the ledger with its
        status and reason (zero cost, unless an upstream attempt may have cost money)."""
        if call.settled:
            return
        call.settled = True
        charge = self.charge_of(call, exc.status, None, error_type or exc.type)
        if call.plan is None:
            charge.reason = f"{call.purpose + '; ' if call.purpose else ''}refused: {exc.message}"[:500]
        try:
            await self.billing.bill(charge, call.reservation)
        except ThriftyError:
            log.warning("recording refused request %s failed", call.request_id)

    async def abandoned(self, call: Call) -> None:
        """The client went away while the upstream worked: settle now. Its real cost is
        unknowable, so the hold (the most it could cost) is charged."""
        if call.settled:
            return
        call.settled = True
        charge = self.charge_of(call, 499, None, "client_disconnected")
        if charge.info is None and call.plan is not None:
            charge.info = call.plan.chain[0].info
        if call.reservation is not None and call.served is not None:
            charge.extra_cost_usd += call.reservation.amount_usd
            charge.reason = f"{charge.reason or ''}; client disconnected: charged the hold"
        try:
            await self.billing.bill(charge, call.reservation)
        except ThriftyError:
            log.warning("recording abandoned request %s failed", call.request_id)
