"""Run one batch line through the gateway's own pipeline: plan (routing, policy), admit
(budgets), upstream call with retries and fallbacks, and one ledger record with
``batch = true`` under the line's deterministic request id.

Pricing: a line is priced at the catalog's batch prices only when it actually went through a
provider's batch API (``batch_priced=True``); run synchronously, as here, it costs what the
provider charges for a normal call, and the ledger says so. Until provider batch APIs are
wired, deferral buys scheduling (off the interactive path), not the discount.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from thrifty.gateway.errors import GatewayError
from thrifty.gateway.schemas import ChatRequest
from thrifty.gateway.service import Gateway, Served
from thrifty.providers.base import UpstreamError, Usage
from thrifty.spend import pricing
from thrifty.spend.api import LedgerRecord, Principal, SpendError

__all__ = ["GatewayExecutor"]


def _error(status: int, message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class GatewayExecutor:
    """An ``Executor`` for :class:`~thrifty.multipliers.batches.BatchRunner`.

    ``gateway`` returns the app's :class:`Gateway` (``create_app(...).gw``), looked up per call
    because the mounts that hold the runner are built before the app exists.
    """

    def __init__(self, gateway: Callable[[], Gateway], *, batch_priced: bool = False) -> None:
        self.gateway = gateway
        self.batch_priced = batch_priced

    async def __call__(self, fields: dict[str, Any], endpoint: str, body: dict[str, Any],
                       request_id: str) -> tuple[int, dict[str, Any]]:
        gw = self.gateway()
        principal = Principal(key_id=fields.get("key_id"), user_id=fields.get("user_id"),
                              team_id=fields.get("team_id"), tags=tuple(fields.get("tags") or ()),
                              routing_profile=fields.get("routing_profile"))
        if endpoint != "/v1/chat/completions":
            return 400, _error(400, f"Batches of {endpoint} are not supported by this gateway yet.",
                               "invalid_request_error", "unsupported_endpoint")
        ts, t0 = time.time(), time.perf_counter()
        reservation = plan = None
        served = Served()
        try:
            req = ChatRequest({k: v for k, v in body.items() if k not in ("stream", "stream_options")})
            plan = gw.plan_chat(principal, req)
            reservation = await gw.spend.admit(principal, plan.chain[0].info, prompt_tokens=plan.prompt_tokens,
                                               max_cost_usd=plan.max_cost_usd)
            result = await gw.chat(plan, req, served)
        except GatewayError as exc:
            status, out, etype = exc.status, _error(exc.status, exc.message, exc.type, exc.code), exc.type
            result = None
        except SpendError as exc:
            return exc.status, _error(exc.status, exc.message, exc.error_type, exc.code)
        except UpstreamError as exc:
            status = exc.status if 400 <= exc.status < 500 else 502
            out, etype, result = _error(status, exc.message, "upstream_error", exc.type), exc.type, None
        else:
            status, out, etype = 200, result, None
        usage = Usage.from_openai((result or {}).get("usage")) if result else None
        info = served.model.info if served.model else None
        cost = frontier = 0.0
        if usage is not None and info is not None:
            cached = min(usage.cached_tokens, usage.prompt_tokens)
            cost = float(pricing.cost_usd(info, usage.prompt_tokens, usage.completion_tokens, cached,
                                          batch=self.batch_priced))
            if gw.frontier is not None:
                frontier = float(pricing.cost_usd(gw.frontier, usage.prompt_tokens, usage.completion_tokens,
                                                  batch=self.batch_priced))
        if reservation is not None:
            record = LedgerRecord(
                request_id=request_id, ts=ts, key_id=principal.key_id, user_id=principal.user_id,
                team_id=principal.team_id, tags=principal.tags, endpoint="chat.completions",
                requested_model=plan.requested if plan else str(body.get("model")),
                served_model=info.name if info else None,
                provider=served.deployment.provider if served.deployment else None,
                route_reason=plan.reason if plan else None,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cached_tokens=usage.cached_tokens if usage else 0,
                input_price=(info.input_cost_per_token or 0.0) if info else 0.0,
                output_price=(info.output_cost_per_token or 0.0) if info else 0.0,
                cached_price=(info.cache_read_input_token_cost or 0.0) if info else 0.0,
                cost_usd=cost, frontier_cost_usd=frontier, latency_ms=(time.perf_counter() - t0) * 1000,
                status=status, error_type=etype, retries=served.retries, batch=True,
                scores=plan.scores if plan else None)
            await gw.spend.settle(reservation, record)
        return status, out
