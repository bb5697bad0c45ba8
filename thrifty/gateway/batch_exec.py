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
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from thrifty.errors import GatewayError, ThriftyError, openai_error
from thrifty.pipeline.billing import Charge
from thrifty.pipeline.call import CHAT, RESPONSES, Call
from thrifty.pipeline.pipeline import upstream_error, usage_of
from thrifty.pipeline.planner import Plan, Served
from thrifty.pipeline.schemas import ChatRequest
from thrifty.providers.base import UpstreamError, Usage
from thrifty.spend.contract import LedgerRecord, Principal, SpendError

if TYPE_CHECKING:
    from thrifty.pipeline.pipeline import Pipeline

__all__ = ["GatewayExecutor", "StoreResults"]

#: Stores lines' results durably, done, before they are billed: ``{line: (status, response,
#: settle)}``, ``settle`` being what billing the line takes after a restart.
StoreResults = Callable[[dict[int, tuple[int, dict[str, Any], str | None]]], Awaitable[None]]

log = logging.getLogger("thrifty.batches")

WINDOW = 24 * 3600  # a provider's batch completes (or expires) within its 24 h window
HOLD_MARGIN = 3600  # ... and thrifty polls, collects and settles it within this after that
HOLD_TTL = WINDOW + HOLD_MARGIN  # how long a provider batch line's hold counts if never settled
_ENDPOINTS = {"/v1/chat/completions": CHAT, "/v1/responses": RESPONSES}


def _error(status: int, message: str, type_: str, code: str | None) -> dict[str, Any]:
    return openai_error(ThriftyError(message, status=status, type=type_, code=code))


def _without_stream(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}


class GatewayExecutor:
    """An ``Executor`` for :class:`~thrifty.multipliers.batches.BatchRunner`: each line is a
    :class:`~thrifty.pipeline.call.Call` planned, admitted, called and billed by the pipeline
    (no cache, cascade or deferral), under the line's deterministic request id."""

    # The runner passes ``store_answer``: the line is marked done with its answer (durably)
    # before it is billed, and :meth:`settle_stored` bills it after a restart in between.
    stores_answers = True

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.upstream = ProviderBatches(pipeline)

    async def __call__(
        self,
        fields: dict[str, Any],
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        *,
        store_answer: Callable[[int, dict[str, Any], str | None], Awaitable[None]] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        pipeline = self.pipeline
        kind = _ENDPOINTS.get(endpoint)
        if kind is None:
            return 400, _error(
                400,
                f"Batches of {endpoint} are not supported by this gateway yet.",
                "invalid_request_error",
                "unsupported_endpoint",
            )
        call = Call(kind, _principal(fields), request_id=request_id)
        call.batch_line = True
        responses = None
        usage: Usage | None = None
        try:
            if kind == RESPONSES:
                from thrifty.gateway.responses_api import ResponsesRequest

                responses = ResponsesRequest(
                    _without_stream(body), request_id, pipeline.gw.router.is_profile
                )
                call.chat = ChatRequest(responses.chat)
            else:
                call.chat = ChatRequest(_without_stream(body))
            await pipeline.plan_admit(call)
            call.served = Served()
            assert call.plan is not None
            result = await pipeline.gw.chat(call.plan, call.chat, call.served)
            usage = usage_of(result, call.plan.prompt_tokens)
            status, etype = 200, None
            out = (
                responses.response(result, call.served.model.info.name, usage)  # type: ignore[union-attr]
                if responses is not None
                else result
            )
        except ThriftyError as exc:
            etype = exc.type
            err = upstream_error(exc) if isinstance(exc, UpstreamError) else exc
            status = err.status
            out = _error(status, err.message, err.type, err.code)
        except Exception:  # never leave the hold taken and the line unbilled
            log.exception("batch line %s failed", request_id)
            status, etype = 500, "internal_error"
            out = _error(500, "internal error executing this request", "api_error", "internal_error")
        charge = pipeline.charge_of(call, status, usage, etype)
        if status != 200 and call.plan is None:
            charge.reason = f"refused: {out['error']['message']}"[:500]

        async def store(record: LedgerRecord) -> None:
            if store_answer is not None:
                settle = None
                if call.reservation is not None and call.plan is not None:
                    settle = _settle_doc(call.reservation, call.plan, None, record)
                await store_answer(status, out, settle)

        await pipeline.billing.bill(charge, call.reservation, before_settle=store)
        return status, out

    async def settle_stored(self, fields: dict[str, Any], items: list[tuple[str, str]]) -> None:
        """After a restart: bill the ``(request id, stored settle)`` lines the ledger does not
        hold (answered, marked done, and the process died before their record was written),
        each with its hold taken again and released. Lines the ledger has are left alone."""
        gw = self.pipeline.gw
        have = await gw.spend.recorded([rid for rid, _ in items])
        principal = _principal(fields)
        for rid, stored in items:
            if rid in have:
                continue
            d = orjson.loads(stored)
            record = LedgerRecord(**{**d["record"], "tags": tuple(d["record"].get("tags") or ())})
            mc = gw.models.get(d.get("model"))
            reservation = (
                await _reinstate(self.pipeline, principal, mc, float(d["max_cost_usd"]))
                if mc is not None
                else None
            )
            log.warning("batch line %s: billed after a restart (it was answered before it)", rid)
            await self.pipeline.billing.bill_record(record, reservation)


def _line_charge(
    pipeline: Pipeline,
    principal: Principal,
    request_id: str,
    plan: Plan | None,
    served: Served,
    result: dict[str, Any] | None,
    status: int,
    error_type: str | None,
    requested: str,
) -> Charge:
    """The charge of one provider batch line, at the provider's batch prices."""
    usage = Usage.from_openai((result or {}).get("usage")) if result else None
    return Charge(
        principal,
        request_id,
        time.time(),
        CHAT,
        plan.requested if plan else requested,
        status,
        info=served.model.info if served.model else None,
        provider=served.deployment.provider if served.deployment else None,
        usage=usage,
        reason=f"{plan.reason if plan else ''}; provider batch API",
        error_type=error_type,
        retries=served.retries,
        scores=plan.scores if plan else None,
        batch=True,
        batch_priced=True,
    )


async def _reinstate(
    pipeline: Pipeline,
    principal: Principal,
    mc: Any,
    max_cost: float,
    ttl: float = HOLD_TTL,
    hold_id: str | None = None,
) -> Any:
    """A hold for a line whose cost is already committed upstream (``SpendControl.reinstate``).
    None if none can be taken: the line is still recorded in the ledger when it settles."""
    try:
        return await pipeline.gw.spend.reinstate(
            principal, mc.info, max_cost_usd=max_cost, ttl=ttl, hold_id=hold_id
        )
    except Exception as exc:  # noqa: BLE001 (no hold is not fatal: the line is still recorded when it settles)
        log.warning("could not hold a provider batch line's cost again: %s", exc)
        return None


def _settle_doc(reservation: Any, plan: Any, served: Served | None, record: LedgerRecord) -> str:
    """What billing a line takes after a restart (``GatewayExecutor.settle_stored``): its ledger
    record, the model whose budgets it holds, and the amount held."""
    held = reservation.amount_usd if reservation is not None else (plan.max_cost_usd if plan else 0.0)
    model = (
        served.model.info.name
        if served is not None and served.model is not None
        else (plan.chain[0].info.name if plan is not None else None)
    )
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

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.held: dict[
            str, tuple[Any, Any, Served]
        ] = {}  # request id -> (reservation, plan, served)
        self.clients: dict[str, Any] = {}

    def close(self) -> None:
        """Close the provider batch clients' connections (a later call opens new ones)."""
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    def _client(self, provider: str) -> Any:
        if provider not in self.clients:
            from thrifty.multipliers.upstream_batch import UpstreamBatchClient

            config = self.pipeline.gw.config
            self.clients[provider] = UpstreamBatchClient.for_provider(
                config.providers[provider], connect=config.timeouts.connect
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

        gw = self.pipeline.gw
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
                    reservation = await gw.spend.admit(
                        principal,
                        plan.chain[0].info,
                        prompt_tokens=plan.prompt_tokens,
                        max_cost_usd=plan.max_cost_usd,
                        ttl=HOLD_TTL,
                    )
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

        principal = _principal(fields)
        response = _error(status, message, "upstream_error", code)
        bills = []
        for line, body in lines:
            rid = line_request_id(batch_id, line)
            reservation, plan, served = self.held.pop(rid, (None, None, None))
            record, _, _ = self.pipeline.billing.record_of(
                _line_charge(
                    self.pipeline, principal, rid, plan, served or Served(), None, status,
                    "upstream_error", str(body.get("model")),
                )
            )
            bills.append((line, status, response, reservation, plan, served, record))
        return await self._bill(bills, store)

    async def _bill(
        self, bills: list[tuple], store: StoreResults | None
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
            await self.pipeline.billing.bill_record(record, reservation)
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

        gw = self.pipeline.gw
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
            reservation = await _reinstate(self.pipeline, principal, mc, max_cost, ttl, d.get("hold_id"))
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
        gw = self.pipeline.gw
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
                    reservation = await _reinstate(self.pipeline, principal, served.model, plan.max_cost_usd)
            record, _, _ = self.pipeline.billing.record_of(
                _line_charge(
                    self.pipeline,
                    principal,
                    rid,
                    plan,
                    served,
                    response if status == 200 else None,
                    status,
                    None if status == 200 else "upstream_error",
                    str(body.get("model")),
                )
            )
            bills.append((line, status, response, reservation, plan, served, record))
        return await self._bill(bills, store)
