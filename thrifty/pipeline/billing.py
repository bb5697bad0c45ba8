"""The one billing path: every call that spends money, or is refused, ends here.

A live call, a cache hit, a batch line (synchronous or through a provider's batch API), a
cascade step and a refusal are each described by a :class:`Charge`; :meth:`Billing.bill` prices
it (the only place a token's price is applied: :func:`thrifty.spend.pricing.cost_nanos`), writes
its ledger record through spend control (settling the budget hold) and counts it in the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from thrifty.catalog.model import ModelInfo
from thrifty.errors import GatewayError
from thrifty.pipeline.metrics import Metrics, rejection_reason
from thrifty.providers.base import Usage
from thrifty.router.learning import RouteTrace
from thrifty.spend.contract import LedgerRecord, Principal, Reservation, SpendControl
from thrifty.spend.money import NANOS_PER_USD
from thrifty.spend.pricing import cost_nanos

log = logging.getLogger("thrifty.billing")


def price(info: ModelInfo, usage: Usage, *, batch: bool = False) -> float:
    """USD for ``usage`` by the provider's rules (cached reads, cache writes, long-context tiers,
    batch prices), exact to the nano-dollar."""
    prompt = max(usage.prompt_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), prompt)
    written = min(max(usage.cache_write_tokens, 0), prompt - cached)
    nanos = cost_nanos(info, prompt, max(usage.completion_tokens, 0), cached, written, batch=batch)
    return nanos / NANOS_PER_USD  # the float nearest the exact amount, as float(Decimal) is


@dataclass(slots=True)
class Charge:
    """What one request did, as billing needs it."""

    principal: Principal
    request_id: str
    ts: float
    endpoint: str
    requested: str
    status: int
    latency_ms: float = 0.0
    info: ModelInfo | None = None  # the model that answered (None: nothing was served)
    provider: str | None = None
    usage: Usage | None = None
    reason: str | None = None
    error_type: str | None = None
    retries: int = 0
    stream: bool = False
    scores: dict[str, float] | None = None
    route: RouteTrace | None = None  # a learned routing decision: what learning needs of it
    cache_hit: bool = False  # answered from thrifty's cache: costs nothing, saves the original
    batch: bool = False  # a batch line
    batch_priced: bool = False  # served by a provider's batch API, at its batch prices
    extra_cost_usd: float = 0.0  # attempts that may have cost money but returned no usage
    counted: bool = True  # False: not a principal's spend (no valid key): metrics only


@dataclass(slots=True)
class Billed:
    cost_usd: float
    frontier_cost_usd: float
    record: LedgerRecord | None


class Billing:
    """Prices charges and settles them with spend control."""

    def __init__(self, spend: SpendControl, metrics: Metrics, frontier: ModelInfo | None) -> None:
        self.spend = spend
        self.metrics = metrics
        self.frontier = frontier

    def frontier_cost(self, usage: Usage, *, batch: bool = False) -> float:
        """What ``usage`` would have cost on the default frontier model."""
        return price(self.frontier, usage, batch=batch) if self.frontier is not None else 0.0

    def record_of(self, c: Charge) -> tuple[LedgerRecord, float, float]:
        """The ledger record of ``c``, its cost and its frontier cost (a cache hit costs 0; its
        record keeps the original call's tokens and prices, so the saving can be reported)."""
        info, usage, batch_priced = c.info, c.usage, c.batch_priced
        cost = frontier = 0.0
        in_price = out_price = cached_price = 0.0
        if info is not None:
            if usage is not None and info.priced:
                if not c.cache_hit:  # a hit costs nothing: no need to price it
                    cost = price(info, usage, batch=batch_priced)
                frontier = self.frontier_cost(usage, batch=batch_priced)
            in_price = info.input_cost_per_token or 0.0
            out_price = info.output_cost_per_token or 0.0
            cached_price = info.cache_read_input_token_cost or 0.0
            if batch_priced:
                in_price = info.input_cost_per_token_batches or in_price
                out_price = info.output_cost_per_token_batches or out_price
        cost = 0.0 if c.cache_hit else cost + c.extra_cost_usd
        route = c.route
        p = c.principal  # billed to (LedgerRecord.billed_to's fields, without its extra call)
        record = LedgerRecord(
            request_id=c.request_id,
            ts=c.ts,
            key_id=p.key_id,
            user_id=p.user_id,
            team_id=p.team_id,
            tags=p.tags,
            endpoint=c.endpoint,
            requested_model=c.requested,
            served_model=info.name if info is not None else None,
            provider=c.provider,
            route_reason=c.reason,
            input_price=in_price,
            output_price=out_price,
            cached_price=cached_price,
            cost_usd=cost,
            frontier_cost_usd=frontier,
            latency_ms=c.latency_ms,
            status=c.status,
            error_type=c.error_type,
            retries=c.retries,
            stream=c.stream,
            cache_hit=c.cache_hit,
            batch=c.batch,
            scores=c.scores,
        )
        if usage is not None:
            record.prompt_tokens = usage.prompt_tokens
            record.completion_tokens = usage.completion_tokens
            record.cached_tokens = usage.cached_tokens
            record.cache_write_tokens = usage.cache_write_tokens
        if route is not None:
            record.route_context = route.context
            record.route_propensity = route.propensity
            record.route_explored = route.explored
        return record, cost, frontier

    async def bill(
        self,
        c: Charge,
        reservation: Reservation | None,
        *,
        before_settle: Callable[[LedgerRecord], Awaitable[None]] | None = None,
    ) -> Billed:
        """Price ``c``, write its ledger record and settle ``reservation``.

        ``before_settle`` runs with the record before it is written (a batch line stores its
        answer durably first, so that a crash in between is billed by the restart, not twice).
        A served answer (status 200) that the ledger cannot record is not completed: the caller
        gets a 503 ``ledger_unavailable`` instead.
        """
        record, cost, frontier = self.record_of(c)
        if (
            reservation is not None
            and record.error_type is None
            and cost > reservation.amount_usd + 1e-12
        ):
            # An upstream that ignored max_tokens on a non-streamed answer (streams are stopped
            # at the hold): billed its real cost, flagged in the ledger and counted.
            record.error_type = "hold_overrun"
            self.metrics.upstream_errors.inc((c.provider or "-", "hold_overrun"))
            log.warning(
                "request %s cost $%.9f, more than the $%.9f held for it (max_tokens ignored?)",
                c.request_id,
                cost,
                reservation.amount_usd,
            )
        m = self.metrics
        if record.error_type == "cost_estimated":  # attempts of unknown cost, at their bound
            m.upstream_errors.inc((c.provider or "-", "cost_estimated"))
        info, usage = c.info, c.usage
        if usage is not None and info is not None:
            m.finished(c.endpoint, info.name, c.status, c.latency_ms / 1000, c.principal.team_id or "-",
                       cost, frontier, usage.prompt_tokens, usage.completion_tokens)
        else:
            m.finished(c.endpoint, info.name if info is not None else "-", c.status, c.latency_ms / 1000)
        if c.status >= 400:
            reason = rejection_reason(c.status, c.error_type)
            if reason is not None:
                m.rejections.inc((reason,))
        if not c.counted:
            return Billed(cost, frontier, None)
        if before_settle is not None:
            await before_settle(record)
        try:
            await self.spend.settle(reservation, record)
        except Exception:
            log.exception("settling request %s failed", c.request_id)
            if c.status == 200:
                raise GatewayError(
                    503,
                    "The request could not be recorded in the ledger, so it was not "
                    "completed. Please retry.",
                    type="ledger_error",
                    code="ledger_unavailable",
                ) from None
        return Billed(cost, frontier, record)

    async def bill_record(self, record: LedgerRecord, reservation: Reservation | None) -> None:
        """Settle a record :meth:`bill`'s pricing produced earlier and stored (a batch line
        answered before a crash, or a provider batch's line): it is not priced again."""
        await self.spend.settle(reservation, record)
