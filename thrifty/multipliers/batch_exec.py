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

import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from thrifty.errors import GatewayError
from thrifty.gateway.schemas import ChatRequest
from thrifty.gateway.service import Gateway, Plan, Served
from thrifty.providers.base import UpstreamError, Usage
from thrifty.spend import pricing
from thrifty.spend.api import LedgerRecord, Principal, SpendError

__all__ = ["GatewayExecutor", "StoreResults"]

#: Stores lines' results durably, done, before they are billed: ``{line: (status, response,
#: settle)}``, ``settle`` being what billing the line takes after a restart.
StoreResults = Callable[[dict[int, tuple[int, dict[str, Any], str | None]]], Awaitable[None]]

log = logging.getLogger("thrifty.batches")

WINDOW = 24 * 3600  # a provider's batch completes (or expires) within its 24 h window
HOLD_MARGIN = 3600  # ... and thrifty polls, collects and settles it within this after that
HOLD_TTL = WINDOW + HOLD_MARGIN  # how long a provider batch line's hold counts if never settled


def _error(status: int, message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class GatewayExecutor:
    """An ``Executor`` for :class:`~thrifty.multipliers.batches.BatchRunner`.

    ``gateway`` returns the app's :class:`Gateway` (``create_app(...).gw``), looked up per call
    because the mounts that hold the runner are built before the app exists.
    """

    # The runner passes ``store_answer``: the line is marked done with its answer (durably)
    # before it is billed, and :meth:`settle_stored` bills it after a restart in between.
    stores_answers = True

    def __init__(self, gateway: Callable[[], Gateway], *, batch_priced: bool = False) -> None:
        self.gateway = gateway
        self.batch_priced = batch_priced
        self.upstream = ProviderBatches(gateway)

    async def __call__(
        self,
        fields: dict[str, Any],
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        *,
        store_answer: Callable[[int, dict[str, Any], str | None], Awaitable[None]] | None = None,
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
            return exc.status, _error(exc.status, exc.message, exc.type, exc.code)
        except UpstreamError as exc:
            status = exc.status if 400 <= exc.status < 500 else 502
            out, etype, result = (
                _error(status, exc.message, "upstream_error", exc.type),
                exc.type,
                None,
            )
        except Exception:  # never leave the hold taken and the line unbilled
            log.exception("batch line %s failed", request_id)
            status, out, etype, result = (
                500,
                _error(500, "internal error executing this request", "api_error", "internal_error"),
                "internal_error",
                None,
            )
        else:
            status, out, etype = 200, result, None
        record = None
        if reservation is not None:
            record = ledger_record(
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
            )
        if store_answer is not None:
            settle = None
            if record is not None and plan is not None:
                settle = orjson.dumps(
                    {
                        "record": _record_fields(record),
                        "model": plan.chain[0].info.name,
                        "max_cost_usd": reservation.amount_usd,  # type: ignore[union-attr]
                    }
                ).decode()
            await store_answer(status, out, settle)
        if record is not None:
            await gw.spend.settle(reservation, record)
        return status, out

    async def settle_stored(self, fields: dict[str, Any], items: list[tuple[str, str]]) -> None:
        """After a restart: bill the ``(request id, stored settle)`` lines the ledger does not
        hold (answered, marked done, and the process died before their record was written),
        each with its hold taken again and released. Lines the ledger has are left alone."""
        gw = self.gateway()
        recorded = getattr(gw.spend, "recorded", None)
        if recorded is None:  # cannot tell what was billed: never bill twice
            return
        have = await recorded([rid for rid, _ in items])
        principal = _principal(fields)
        for rid, stored in items:
            if rid in have:
                continue
            d = orjson.loads(stored)
            record = LedgerRecord(**{**d["record"], "tags": tuple(d["record"].get("tags") or ())})
            mc = gw.models.get(d.get("model"))
            reservation = (
                await _reinstate(gw, principal, mc, float(d["max_cost_usd"]))
                if mc is not None
                else None
            )
            log.warning("batch line %s: billed after a restart (it was answered before it)", rid)
            await gw.spend.settle(reservation, record)


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
    return LedgerRecord.billed_to(
        principal,
        request_id=request_id,
        ts=ts,
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


async def _admit(gw: Gateway, principal: Principal, plan: Any, ttl: float) -> Any:
    """``admit`` a provider batch line, its hold counting for ``ttl`` seconds if never settled
    (a spend control whose ``admit`` takes no ``ttl`` keeps its holds until settled anyway)."""
    kw: dict[str, Any] = {"prompt_tokens": plan.prompt_tokens, "max_cost_usd": plan.max_cost_usd}
    if _takes_ttl(gw.spend.admit):
        kw["ttl"] = ttl
    return await gw.spend.admit(principal, plan.chain[0].info, **kw)


def _takes_ttl(fn: Any) -> bool:
    try:
        return "ttl" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


async def _reinstate(
    gw: Gateway,
    principal: Principal,
    mc: Any,
    max_cost: float,
    ttl: float = HOLD_TTL,
    hold_id: str | None = None,
) -> Any:
    """A hold for a line whose cost is already committed upstream (``SpendControl.reinstate``;
    ``admit`` for a spend control without it). None if none can be taken: the line is still
    recorded in the ledger when it settles."""
    reinstate = getattr(gw.spend, "reinstate", None)
    try:
        if reinstate is not None:
            kw: dict[str, Any] = {"max_cost_usd": max_cost, "ttl": ttl}
            if hold_id and "hold_id" in inspect.signature(reinstate).parameters:
                kw["hold_id"] = hold_id
            return await reinstate(principal, mc.info, **kw)
        return await gw.spend.admit(principal, mc.info, prompt_tokens=0, max_cost_usd=max_cost)
    except Exception as exc:  # noqa: BLE001 (no hold is not fatal: the line is still recorded when it settles)
        log.warning("could not hold a provider batch line's cost again: %s", exc)
        return None


def _settle_doc(reservation: Any, plan: Any, served: Served | None, record: LedgerRecord) -> str:
    """What billing a line takes after a restart (``GatewayExecutor.settle_stored``): its ledger
    record, the model whose budgets it holds, and the amount held."""
    held = reservation.amount_usd if reservation is not None else (plan.max_cost_usd if plan else 0.0)
    model = served.model.info.name if served is not None and served.model is not None else None
    return orjson.dumps(
        {"record": _record_fields(record), "model": model, "max_cost_usd": held}
    ).decode()


def _record_fields(record: LedgerRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


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

    async def prepare(
        self,
        batch_id: str,
        endpoint: str,
        fields: dict[str, Any],
        lines: list[tuple[int, dict[str, Any]]],
    ) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        """Plan and admit what can go to a provider's batch API: ``{provider: lines}`` (the rest
        run synchronously). Each line's hold counts until its provider batch's window ends
        (:data:`HOLD_TTL`), not only the spend control's ``hold_ttl``. Nothing is sent: the
        runner records the submission durably first, then calls :meth:`send`."""
        from thrifty.multipliers.batches import line_request_id

        gw = self.gateway()
        if endpoint != "/v1/chat/completions" or not any(
            p.options.get("batch_api") for p in gw.config.providers.values()
        ):
            return {}
        principal = _principal(fields)
        out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for line, body in lines:
            rid = line_request_id(batch_id, line)
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
            if rid not in self.held:  # one hold per line
                try:
                    reservation = await _admit(gw, principal, plan, HOLD_TTL)
                except SpendError:
                    continue  # refused now: the synchronous path will refuse it with the reason
                self.held[rid] = (reservation, plan, Served(mc, dep))
            out.setdefault(dep.provider, []).append((line, body))
        return out

    def _upstream_body(self, rid: str, body: dict[str, Any]) -> dict[str, Any]:
        """What the provider gets for a line: its request for the deployment it was planned to
        (the same after a restart: the deployment is kept with the line's hold)."""
        served = self.held.get(rid, (None, None, None))[2]
        req = ChatRequest({k: v for k, v in body.items() if k not in ("stream", "stream_options")})
        model = served.deployment.model if served is not None and served.deployment else None
        return {**req.body, "model": model or body.get("model")}

    async def send(
        self,
        batch_id: str,
        provider: str,
        tag: str,
        endpoint: str,
        fields: dict[str, Any],
        lines: list[tuple[int, dict[str, Any]]],
        on_file: Callable[[str], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Upload the lines of submission ``tag`` and create the provider's batch of them
        (tagged in its metadata and its file's name); the provider's batch object."""
        from thrifty.multipliers.batches import line_request_id

        items = []
        for line, body in lines:
            rid = line_request_id(batch_id, line)
            items.append((rid, self._upstream_body(rid, body)))
        return await self._client(provider).submit(endpoint, items, tag, on_file)

    async def find(self, provider: str, tag: str, since: float | None) -> dict[str, Any] | None:
        """The provider's batch of submission ``tag``, None if it has none (raises if it
        cannot be asked)."""
        return await self._client(provider).find(tag, since)

    async def discard_files(self, provider: str, tag: str, file_id: str | None) -> None:
        """Delete the input files of a submission the provider made no batch of (an upload that
        succeeded before the process died or the batch was refused): best effort, they cost
        nothing but storage at the provider."""
        from thrifty.multipliers.upstream_batch import input_filename

        client = self._client(provider)
        ids = set(await client.files_named(input_filename(tag)))
        if file_id:
            ids.add(file_id)
        for fid in sorted(ids):
            if await client.delete_file(fid):
                log.info("deleted %s's orphan input file %s of submission %s", provider, fid, tag)

    async def fail(
        self,
        batch_id: str,
        fields: dict[str, Any],
        lines: list[tuple[int, dict[str, Any]]],
        message: str,
        code: str,
        *,
        status: int = 500,
        store: StoreResults | None = None,
    ) -> dict[int, tuple[int, dict[str, Any]]]:
        """Fail ``lines`` that the provider never ran (answer ``status``, ``upstream_error``
        ``code``): each line's hold is released with a ledger record of cost 0 (nothing was
        charged); their results, stored with ``store`` before they are billed."""
        from thrifty.multipliers.batches import line_request_id

        gw = self.gateway()
        principal = _principal(fields)
        response = _error(status, message, "upstream_error", code)
        bills = []
        for line, body in lines:
            rid = line_request_id(batch_id, line)
            reservation, plan, served = self.held.pop(rid, (None, None, None))
            record = ledger_record(
                gw, principal, rid, time.time(), 0.0, plan, served or Served(), None, status,
                "upstream_error", str(body.get("model")), batch_priced=True,
            )
            bills.append((line, status, response, reservation, plan, served, record))
        return await self._bill(gw, bills, store)

    async def _bill(
        self, gw: Gateway, bills: list[tuple], store: StoreResults | None
    ) -> dict[int, tuple[int, dict[str, Any]]]:
        """Mark lines done and bill them: ``bills`` are ``(line, status, response, reservation,
        plan, served, record)``. With ``store``, each line's result is stored durably with
        what billing it takes (ledger record, model, amount held) *before* it is billed, in one
        write for all of them; a process that dies before billing them all is billed by the
        restart (``GatewayExecutor.settle_stored``: the lines the ledger does not hold), and the
        lines, being done, get no hold again. So no line is billed twice or not at all, and no
        budget counts a line twice (the ledger ignores a request id it has; an in-memory budget
        counter would not)."""
        out = {line: (status, response) for line, status, response, *_ in bills}
        if store is not None:
            await store(
                {
                    line: (status, response, _settle_doc(reservation, plan, served, record))
                    for line, status, response, reservation, plan, served, record in bills
                }
            )
        for _line, _status, _response, reservation, _plan, _served, record in bills:
            await gw.spend.settle(reservation, record)
        return out

    def describe_hold(self, request_id: str) -> str | None:
        """What a restart needs to take the line's hold again and bill it as submitted: the
        model and deployment it went to, its plan's request and reason, and the amount held."""
        reservation, plan, served = self.held.get(request_id, (None, None, None))
        if reservation is None or plan is None or served is None or served.model is None:
            return None
        dep = served.deployment
        return orjson.dumps(
            {
                "model": served.model.info.name,
                "provider": dep.provider if dep else None,
                "upstream_model": dep.model if dep else None,
                "requested": plan.requested,
                "reason": plan.reason,
                "prompt_tokens": plan.prompt_tokens,
                "max_cost_usd": reservation.amount_usd,
                "hold_id": getattr(reservation.token, "id", None),
            }
        ).decode()

    async def restore(
        self, batch_id: str, fields: dict[str, Any], lines: list[tuple]
    ) -> None:
        """After a restart: hold again what each line held (``describe_hold``), so its budgets
        count it until the provider's result settles it: ``lines`` are ``(line, hold, window
        end)``, the hold counting until the provider batch's window end plus
        :data:`HOLD_MARGIN` (a line not yet known to be at the provider: a full window from now)."""
        from thrifty.multipliers.batches import line_request_id

        gw = self.gateway()
        principal = _principal(fields)
        now = time.time()
        for item in lines:
            line, described = item[0], item[1]
            ends = item[2] if len(item) > 2 else None
            ttl = HOLD_TTL if ends is None else max(ends + HOLD_MARGIN - now, HOLD_MARGIN)
            rid = line_request_id(batch_id, line)
            if rid in self.held or not described:
                continue  # held by this process already, or submitted before holds were kept
            try:
                d = orjson.loads(described)
                mc = gw.models[d["model"]]
                max_cost = float(d["max_cost_usd"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("batch line %s: its hold cannot be reinstated (model gone?)", rid)
                continue
            dep = next(
                (
                    x
                    for x in mc.deployments
                    if x.provider == d.get("provider") and x.model == d.get("upstream_model")
                ),
                mc.deployments[0],
            )
            plan = Plan(
                str(d.get("requested") or mc.info.name),
                [mc],
                str(d.get("reason") or "explicit model"),
                int(d.get("prompt_tokens") or 0),
                0,
                max_cost,
            )
            reservation = await _reinstate(gw, principal, mc, max_cost, ttl, d.get("hold_id"))
            self.held[rid] = (reservation, plan, Served(mc, dep))

    async def collect(
        self,
        tag: str,
        batch_id: str,
        endpoint: str,
        fields: dict[str, Any],
        lines: list[tuple[int, dict[str, Any]]],
        *,
        store: StoreResults | None = None,
    ) -> dict[int, tuple[int, dict[str, Any]]] | None:
        """Results of a finished provider batch, stored with ``store`` (see :meth:`_bill`) and
        billed; None while the provider is working."""
        from thrifty.multipliers.batches import line_request_id

        provider, upstream_id = tag.split("|", 1)
        batch = await self._client(provider).poll(upstream_id)
        if batch is None:
            return None
        results = await self._client(provider).results(batch)
        gw = self.gateway()
        principal = _principal(fields)
        bills = []
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
            if served is None:
                # Submitted before holds were kept, and the gateway restarted: plan again for
                # the record, and hold its maximum so that settling charges its budgets.
                try:
                    plan = gw.plan_chat(principal, ChatRequest(dict(body)))
                    served = Served(plan.chain[0], plan.chain[0].deployments[0])
                except (GatewayError, SpendError):
                    served = Served()
                if plan is not None and served.model is not None:
                    reservation = await _reinstate(gw, principal, served.model, plan.max_cost_usd)
            record = ledger_record(
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
            )
            bills.append((line, status, response, reservation, plan, served, record))
        return await self._bill(gw, bills, store)
