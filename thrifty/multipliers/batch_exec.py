"""Run batch lines through the gateway: plan (routing, policy), admit (budgets), call, and
one ledger record with ``batch = true`` under the line's deterministic request id.

Two paths:

* lines whose model is served by a provider configured with ``batch_api = true`` go to
  that provider's batch API (:class:`ProviderBatches`) and are priced at the catalog's
  batch prices (about half);
* the rest run synchronously through the normal pipeline (:class:`GatewayExecutor`) and are
  priced at normal prices, because that is what the provider charges for them: deferral
  then buys scheduling off the interactive path, not the discount, and the ledger says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
        self.upstream = ProviderBatches(gateway)

    async def __call__(
        self, fields: dict[str, Any], endpoint: str, body: dict[str, Any], request_id: str
    ) -> tuple[int, dict[str, Any]]:
        gw = self.gateway()
        principal = Principal(
            key_id=fields.get("key_id"),
            user_id=fields.get("user_id"),
            team_id=fields.get("team_id"),
            tags=tuple(fields.get("tags") or ()),
            routing_profile=fields.get("routing_profile"),
        )
        if endpoint != "/v1/chat/completions":
            return 400, _error(
                400,
                f"Batches of {endpoint} are not supported by this gateway yet.",
                "invalid_request_error",
                "unsupported_endpoint",
            )
        ts, t0 = time.time(), time.perf_counter()
        reservation = plan = None
        served = Served()
        try:
            req = ChatRequest(
                {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            )
            plan = gw.plan_chat(principal, req)
            reservation = await gw.spend.admit(
                principal,
                plan.chain[0].info,
                prompt_tokens=plan.prompt_tokens,
                max_cost_usd=plan.max_cost_usd,
            )
            result = await gw.chat(plan, req, served)
        except GatewayError as exc:
            status, out, etype = (
                exc.status,
                _error(exc.status, exc.message, exc.type, exc.code),
                exc.type,
            )
            result = None
        except SpendError as exc:
            return exc.status, _error(exc.status, exc.message, exc.error_type, exc.code)
        except UpstreamError as exc:
            status = exc.status if 400 <= exc.status < 500 else 502
            out, etype, result = (
                _error(status, exc.message, "upstream_error", exc.type),
                exc.type,
                None,
            )
        else:
            status, out, etype = 200, result, None
        if reservation is not None:
            await gw.spend.settle(
                reservation,
                ledger_record(
                    gw,
                    principal,
                    request_id,
                    ts,
                    (time.perf_counter() - t0) * 1000,
                    plan,
                    served,
                    result,
                    status,
                    etype,
                    str(body.get("model")),
                    batch_priced=self.batch_priced,
                ),
            )
        return status, out


def ledger_record(
    gw: Gateway,
    principal: Principal,
    request_id: str,
    ts: float,
    latency_ms: float,
    plan: Any,
    served: Served,
    result: dict[str, Any] | None,
    status: int,
    error_type: str | None,
    requested: str,
    *,
    batch_priced: bool,
) -> LedgerRecord:
    """The ledger record of one batch line (``batch = true``), priced at batch prices or not."""
    usage = Usage.from_openai((result or {}).get("usage")) if result else None
    info = served.model.info if served.model else None
    cost = frontier = 0.0
    if usage is not None and info is not None:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cost = float(
            pricing.cost_usd(
                info, usage.prompt_tokens, usage.completion_tokens, cached, batch=batch_priced
            )
        )
        if gw.frontier is not None:
            frontier = float(
                pricing.cost_usd(
                    gw.frontier, usage.prompt_tokens, usage.completion_tokens, batch=batch_priced
                )
            )
    input_price = (info.input_cost_per_token or 0.0) if info else 0.0
    output_price = (info.output_cost_per_token or 0.0) if info else 0.0
    if batch_priced and info is not None:
        input_price = info.input_cost_per_token_batches or input_price
        output_price = info.output_cost_per_token_batches or output_price
    return LedgerRecord(
        request_id=request_id,
        ts=ts,
        key_id=principal.key_id,
        user_id=principal.user_id,
        team_id=principal.team_id,
        tags=principal.tags,
        endpoint="chat.completions",
        requested_model=plan.requested if plan else requested,
        served_model=info.name if info else None,
        provider=served.deployment.provider if served.deployment else None,
        route_reason=(plan.reason if plan else None)
        if not batch_priced
        else f"{plan.reason if plan else ''}; provider batch API",
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        cached_tokens=usage.cached_tokens if usage else 0,
        input_price=input_price,
        output_price=output_price,
        cached_price=(info.cache_read_input_token_cost or 0.0) if info else 0.0,
        cost_usd=cost,
        frontier_cost_usd=frontier,
        latency_ms=latency_ms,
        status=status,
        error_type=error_type,
        retries=served.retries,
        batch=True,
        scores=plan.scores if plan else None,
    )


def _principal(fields: dict[str, Any]) -> Principal:
    return Principal(
        key_id=fields.get("key_id"),
        user_id=fields.get("user_id"),
        team_id=fields.get("team_id"),
        tags=tuple(fields.get("tags") or ()),
        routing_profile=fields.get("routing_profile"),
    )


class ProviderBatches:
    """Lines whose planned model is served by a ``batch_api = true`` provider go to that
    provider's batch API: planned and admitted (budgets reserved) at submission, billed at
    batch prices when the provider's results come back."""

    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        self.gateway = gateway
        self.held: dict[
            str, tuple[Any, Any, Served]
        ] = {}  # request id -> (reservation, plan, served)
        self.clients: dict[str, Any] = {}

    def _client(self, provider: str) -> Any:
        if provider not in self.clients:
            from thrifty.multipliers.upstream_batch import UpstreamBatchClient

            pc = self.gateway().config.providers[provider]
            self.clients[provider] = UpstreamBatchClient(
                pc.base_url or "", pc.api_key, dict(pc.headers)
            )
        return self.clients[provider]

    async def submit(
        self,
        batch_id: str,
        endpoint: str,
        fields: dict[str, Any],
        lines: list[tuple[int, dict[str, Any]]],
    ) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        """Submit what can go upstream; ``{tag: lines}`` of what went (the rest run synchronously)."""
        from thrifty.multipliers.batches import line_request_id

        gw = self.gateway()
        if endpoint != "/v1/chat/completions" or not any(
            p.options.get("batch_api") for p in gw.config.providers.values()
        ):
            return {}
        principal = _principal(fields)
        groups: dict[str, list[tuple[int, dict[str, Any], Any, Any]]] = {}
        for line, body in lines:
            try:
                req = ChatRequest(
                    {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
                )
                plan = gw.plan_chat(principal, req)
            except (GatewayError, SpendError):
                continue  # the synchronous path reports the error
            mc = plan.chain[0]
            dep = mc.deployments[0]
            if not gw.config.providers[dep.provider].options.get("batch_api"):
                continue
            groups.setdefault(dep.provider, []).append(
                (line, {**req.body, "model": dep.model}, plan, dep)
            )
        out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for provider, items in groups.items():
            admitted = []
            for line, body, plan, dep in items:
                rid = line_request_id(batch_id, line)
                if rid not in self.held:  # a retried submission keeps its first hold: one per line
                    try:
                        reservation = await gw.spend.admit(
                            principal,
                            plan.chain[0].info,
                            prompt_tokens=plan.prompt_tokens,
                            max_cost_usd=plan.max_cost_usd,
                        )
                    except SpendError:
                        continue  # refused now: the synchronous path will refuse it with the reason
                    self.held[rid] = (reservation, plan, Served(plan.chain[0], dep))
                admitted.append((line, body))
            if not admitted:
                continue
            upstream_id = await self._client(provider).submit(
                endpoint, [(line_request_id(batch_id, line), body) for line, body in admitted]
            )
            out[f"{provider}|{upstream_id}"] = admitted
        return out

    async def collect(
        self,
        tag: str,
        batch_id: str,
        endpoint: str,
        fields: dict[str, Any],
        lines: list[tuple[int, dict[str, Any]]],
    ) -> dict[int, tuple[int, dict[str, Any]]] | None:
        """Results of a finished provider batch, billed; None while the provider is working."""
        from thrifty.multipliers.batches import line_request_id

        provider, upstream_id = tag.split("|", 1)
        batch = await self._client(provider).poll(upstream_id)
        if batch is None:
            return None
        results = await self._client(provider).results(batch)
        gw = self.gateway()
        principal = _principal(fields)
        out: dict[int, tuple[int, dict[str, Any]]] = {}
        for line, body in lines:
            rid = line_request_id(batch_id, line)
            status, response = results.get(
                rid,
                (
                    500,
                    _error(
                        500,
                        f"the provider's batch ended '{batch.get('status')}' without this request",
                        "upstream_error",
                        "batch_incomplete",
                    ),
                ),
            )
            reservation, plan, served = self.held.pop(rid, (None, None, None))
            if (
                served is None
            ):  # after a restart: plan again for the record (no budget hold to release)
                try:
                    plan = gw.plan_chat(principal, ChatRequest(dict(body)))
                    served = Served(plan.chain[0], plan.chain[0].deployments[0])
                except (GatewayError, SpendError):
                    served = Served()
            await gw.spend.settle(
                reservation,
                ledger_record(
                    gw,
                    principal,
                    rid,
                    time.time(),
                    0.0,
                    plan,
                    served,
                    response if status == 200 else None,
                    status,
                    None if status == 200 else "upstream_error",
                    str(body.get("model")),
                    batch_priced=True,
                ),
            )
            out[line] = (status, response)
        return out
