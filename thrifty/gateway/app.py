"""The gateway as a raw ASGI application.

No framework: a dict of routes and hand-written request/response plumbing keeps the
per-request overhead in microseconds. Endpoints: ``POST /v1/chat/completions``,
``POST /v1/messages`` (Anthropic), ``POST /v1/responses`` (OpenAI's Responses API, served
through the same chat pipeline), ``POST /v1/embeddings``, ``GET /v1/models`` and
``GET /v1/models/{model}`` (with spend control: the caller's key is required and only what
its policies permit is listed), ``GET /healthz``, ``GET /readyz``, ``GET /metrics``; extra
ASGI apps (e.g. the spend admin API) are mounted under path prefixes.

Every response of a model call carries ``x-thrifty-*`` headers: the served model, why it
was chosen, its cost in USD, what the default frontier model would have cost, the
request id and the retries/fallbacks it took. A stream's headers leave before its cost is
known, so streamed responses carry the cost in an SSE comment line just before ``[DONE]``
(``: thrifty cost_usd=... frontier_cost_usd=...``; clients ignore comments) and in the ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from thrifty.catalog.loader import Catalog
from thrifty.errors import GatewayError
from thrifty.gateway.config import GatewayConfig
from thrifty.gateway.errors import anthropic_body, openai_body
from thrifty.gateway.metrics import Metrics
from thrifty.gateway.responses import ResponsesRequest, ResponsesStream
from thrifty.gateway.routing import AutoRouter
from thrifty.gateway.schemas import ChatRequest, EmbeddingsRequest, parse_json
from thrifty.gateway.service import Gateway, Plan, Served, price
from thrifty.providers import build_providers
from thrifty.providers.base import UpstreamError, Usage
from thrifty.providers.translate import (
    OpenAIStreamToAnthropic,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
    sse_event,
)
from thrifty.spend.api import LedgerRecord, Principal, Reservation, SpendControl, SpendError

log = logging.getLogger("thrifty.gateway")

ASGIApp = Callable[
    [dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]
]
Send = Callable[[dict], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
OPENAI, ANTHROPIC, RESPONSES = "openai", "anthropic", "responses"
_MODEL_PREFIXES = ("/v1/models/", "/models/")  # GET /v1/models/{model}


class ClientError(Exception):
    """The body could not be read (too large); carries a GatewayError."""


_ID_PREFIX = "req_" + os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    """Unique per process start and request; a counter, because a getrandom() syscall per request
    costs more than the rest of the id (measured: ~15 us on the benchmark machine)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def _usage_chunk(held: list[dict[str, Any]], ctx: _Ctx, usage: Usage) -> dict[str, Any]:
    """The final ``stream_options.include_usage`` chunk, shaped like the stream's own chunks."""
    ref = held[-1] if held else {}
    return {
        "id": ref.get("id") or ctx.request_id,
        "object": "chat.completion.chunk",
        "created": ref.get("created") or int(ctx.ts),
        "model": ref.get("model")
        or (ctx.served.model.info.name if ctx.served and ctx.served.model else ""),
        "choices": [],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


def _usage_of(body: dict[str, Any] | None, fallback_prompt: int) -> Usage:
    usage = Usage.from_openai((body or {}).get("usage"))
    return usage if usage is not None else Usage(fallback_prompt, 0)


async def dispatch_to_mount(
    mounts: Sequence[tuple[str, ASGIApp]], scope: dict, receive: Callable, send: Send
) -> bool:
    """Hand the request to the app of the first mount whose prefix matches the path (callers
    order mounts longest prefix first); False when none matches."""
    path = scope["path"]
    for prefix, app in mounts:
        if path == prefix or path.startswith(prefix + "/"):
            sub = dict(scope)
            sub["path"] = path[len(prefix) :] or "/"
            sub["root_path"] = scope.get("root_path", "") + prefix
            await app(sub, receive, send)
            return True
    return False


class _Ctx:
    """Per-request state the handlers share: who, what was decided, what must be settled."""

    __slots__ = (
        "endpoint",
        "fmt",
        "plan",
        "principal",
        "request_id",
        "reservation",
        "responses",
        "served",
        "settled",
        "started",
        "stream",
        "t0",
        "ts",
    )

    def __init__(self, endpoint: str, fmt: str) -> None:
        self.request_id = _new_request_id()
        self.ts = time.time()
        self.t0 = time.perf_counter()
        self.principal: Principal | None = None
        self.endpoint = endpoint
        self.plan: Plan | None = None
        self.served: Served | None = None
        self.reservation: Reservation | None = None
        self.settled = False
        self.stream = False
        self.fmt = fmt
        self.started = False  # response headers sent: errors must end the stream instead
        self.responses: ResponsesRequest | None = None  # a Responses API request's translation


class GatewayApp:
    def __init__(self, gateway: Gateway, mounts: Mapping[str, ASGIApp]) -> None:
        self.gw = gateway
        self.config = gateway.config
        self.metrics = gateway.metrics
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        # Profiles served in front of the gateway (e.g. the multipliers' "auto-cascade"), listed by
        # /v1/models for callers whose policies permit one of their models: id -> (owner, models).
        self.extra_profiles: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.started = False
        self.start_lock: asyncio.Lock | None = None
        self.router_watch: asyncio.Task | None = None
        self.routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/chat/completions"): self.chat_completions,
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/responses"): self.responses,
            ("POST", "/responses"): self.responses,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/models"): self.list_models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_endpoint,
        }

    # -- ASGI plumbing ---------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            handler = self.routes.get((scope["method"], path))
            if handler is not None:
                if not self.started:
                    await self.startup()
                await handler(scope, receive, send)
                return
            if scope["method"] == "GET":
                for prefix in _MODEL_PREFIXES:
                    if path.startswith(prefix):
                        if not self.started:
                            await self.startup()
                        await self.retrieve_model(scope, receive, send, path[len(prefix) :])
                        return
            if await dispatch_to_mount(self.mounts, scope, receive, send):
                return
            fmt = ANTHROPIC if path.startswith("/v1/messages") else OPENAI
            known = path.startswith(_MODEL_PREFIXES) or any(p == path for (_, p) in self.routes)
            status = 405 if known else 404
            msg = (
                f"Method {scope['method']} not allowed on {path}."
                if known
                else f"Unknown path: {path}."
            )
            await self._error(
                send,
                fmt,
                GatewayError(
                    status, msg, code="not_found" if status == 404 else "method_not_allowed"
                ),
                None,
            )
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 (report, don't crash with a traceback)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.start_lock is None:
            self.start_lock = asyncio.Lock()
        async with self.start_lock:
            if self.started:
                return
            for provider in self.gw.providers.values():
                await provider.start()
            if self.config.router_reload_s > 0 and self.gw.router.path is not None:
                self.router_watch = asyncio.create_task(self._watch_router(self.config.router_reload_s))
            self.started = True

    async def _watch_router(self, period: float) -> None:
        """Serve a changed router directory without a restart (see AutoRouter.load_if_changed)."""
        while True:
            await asyncio.sleep(period)
            try:
                loaded = await asyncio.to_thread(self.gw.router.load_if_changed)
            except Exception:  # the watcher must outlive any one bad check
                log.exception("router reload check failed")
                continue
            if loaded is not None:
                self.gw.router.install(*loaded)

    async def shutdown(self) -> None:
        if self.router_watch is not None:
            self.router_watch.cancel()
        for provider in self.gw.providers.values():
            try:
                await provider.close()
            except Exception:  # closing must not stop the others
                log.exception("closing provider failed")
        try:
            await self.gw.spend.close()
        except Exception:
            log.exception("closing spend control failed")

    @staticmethod
    async def _read_body(scope: dict, receive: Callable, limit: int) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        raise ClientError()
                except ValueError:
                    pass
                break
        chunks = []
        size = 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    raise ClientError()
                chunks.append(body)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _send(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(
        self, send: Send, fmt: str, exc: GatewayError | SpendError, ctx: _Ctx | None
    ) -> None:
        if (
            ctx is not None and ctx.started
        ):  # mid-stream: the status is gone, end with an error event
            resp = ctx.responses.stream if ctx.responses is not None else None
            await send(
                {
                    "type": "http.response.body",
                    "body": resp.fail(exc.message)
                    if resp is not None
                    else _stream_error(fmt, exc.message, "api_error"),
                    "more_body": False,
                }
            )
            return
        if isinstance(exc, SpendError):
            status, type_, code, param = exc.status, exc.type, exc.code, None
        else:
            status, type_, code, param = exc.status, exc.type, exc.code, exc.param
        body = (
            anthropic_body(status, exc.message, type_)
            if fmt == ANTHROPIC
            else openai_body(status, exc.message, type_, code, param)
        )
        headers = list(JSON_HEADERS)
        for k, v in exc.headers.items():
            headers.append((k.lower().encode(), str(v).encode()))
        if ctx is not None and not any(k == b"x-request-id" for k, _ in headers):
            headers.append((b"x-request-id", ctx.request_id.encode()))  # route headers may carry it
        await self._send(send, status, body, headers)

    # -- the model-call skeleton -----------------------------------------------------------

    async def _authenticate(self, scope: dict) -> Principal:
        auth = None
        for name, value in scope["headers"]:
            if name == b"authorization" or (name == b"x-api-key" and auth is None):
                auth = value.decode("latin-1")
        return await self.gw.spend.authenticate(auth)

    async def _settle(
        self, ctx: _Ctx, status: int, usage: Usage | None, error_type: str | None
    ) -> tuple[float, float]:
        """Write the ledger record (once) and update metrics; returns (cost, frontier cost)."""
        cost = frontier = 0.0
        served = ctx.served
        model_info = served.model.info if served and served.model else None
        if usage is not None and model_info is not None:
            cost = price(model_info, usage)
            frontier = self.gw.frontier_cost(usage)
        if ctx.settled:
            return cost, frontier
        ctx.settled = True
        latency = time.perf_counter() - ctx.t0
        served_name = model_info.name if model_info else None
        if ctx.reservation is not None or ctx.plan is not None:
            record = LedgerRecord.billed_to(
                ctx.principal or Principal(),
                request_id=ctx.request_id,
                ts=ctx.ts,
                endpoint=ctx.endpoint,
                requested_model=ctx.plan.requested if ctx.plan else "",
                served_model=served_name,
                provider=served.deployment.provider if served and served.deployment else None,
                route_reason=ctx.plan.reason if ctx.plan else None,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cached_tokens=usage.cached_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                input_price=(model_info.input_cost_per_token or 0.0) if model_info else 0.0,
                output_price=(model_info.output_cost_per_token or 0.0) if model_info else 0.0,
                cached_price=(model_info.cache_read_input_token_cost or 0.0) if model_info else 0.0,
                cost_usd=cost,
                frontier_cost_usd=frontier,
                latency_ms=latency * 1000,
                status=status,
                error_type=error_type,
                retries=served.retries if served else 0,
                stream=ctx.stream,
                scores=ctx.plan.scores if ctx.plan else None,
            )
            if ctx.reservation is not None:
                try:
                    await self.gw.spend.settle(ctx.reservation, record)
                except Exception:
                    log.exception("settling request %s failed", ctx.request_id)
                    if status == 200:
                        # A request the ledger could not record must not complete for the client.
                        raise GatewayError(
                            503,
                            "The request could not be recorded in the ledger, so it was not "
                            "completed. Please retry.",
                            type="ledger_error",
                            code="ledger_unavailable",
                        ) from None
        m = self.metrics
        m.observe(ctx.endpoint, served_name or "-", status, latency)
        if served_name and usage is not None:
            m.cost[served_name] += cost
            m.frontier_cost[served_name] += frontier
            m.tokens[(served_name, "prompt")] += usage.prompt_tokens
            m.tokens[(served_name, "completion")] += usage.completion_tokens
        return cost, frontier

    def _route_headers(
        self, ctx: _Ctx, cost: float | None, frontier: float | None
    ) -> list[tuple[bytes, bytes]]:
        served, plan = ctx.served, ctx.plan
        h = [(b"x-request-id", ctx.request_id.encode())]
        if served is not None:
            if served.model is not None and served.deployment is not None:
                h.append((b"x-thrifty-model", served.model.info.name.encode()))
                h.append((b"x-thrifty-provider", served.deployment.provider.encode()))
            h.append((b"x-thrifty-retries", str(served.retries).encode()))
            h.append((b"x-thrifty-fallbacks", str(served.fallbacks).encode()))
            if served.errors:
                h.append((b"x-thrifty-attempt-errors", "; ".join(served.errors).encode()))
            if served.dropped:  # adapted for a reasoning model the gateway chose
                h.append((b"x-thrifty-dropped-params", ", ".join(served.dropped).encode()))
            if served.renamed:
                h.append((b"x-thrifty-renamed-params", b"max_tokens->max_completion_tokens"))
        if plan is not None:
            h.append((b"x-thrifty-route-reason", plan.reason.encode("ascii", "replace")))
        if cost is not None:
            h.append((b"x-thrifty-cost-usd", f"{cost:.9f}".encode()))
            h.append((b"x-thrifty-frontier-cost-usd", f"{frontier:.9f}".encode()))
        return h

    async def _model_call(
        self,
        scope: dict,
        receive: Callable,
        send: Send,
        endpoint: str,
        fmt: str,
        run: Callable[[_Ctx, dict[str, Any]], Awaitable[None]],
    ) -> None:
        """Shared by every model endpoint: read, authenticate, run, and turn every failure into
        an API-format error (settling the request if it was admitted)."""
        ctx = _Ctx(endpoint, fmt)
        try:
            try:
                raw = await self._read_body(scope, receive, self.config.max_body_bytes)
            except ClientError:
                raise GatewayError(
                    413,
                    f"Request body is larger than the gateway's limit of "
                    f"{self.config.max_body_bytes} bytes.",
                    code="request_too_large",
                    type="request_too_large" if fmt == ANTHROPIC else "invalid_request_error",
                ) from None
            ctx.principal = await self._authenticate(scope)
            body = parse_json(raw)
            await run(ctx, body)
        except (GatewayError, SpendError) as exc:
            status = exc.status
            if ctx.reservation is not None and not ctx.settled:
                await self._settle(ctx, status, None, exc.type)
            elif not ctx.settled:
                self.metrics.observe(endpoint, "-", status, time.perf_counter() - ctx.t0)
            await self._error(send, fmt, exc, ctx)
        except UpstreamError as exc:
            err = _upstream_to_gateway(exc)
            if not ctx.settled:
                await self._settle(ctx, err.status, None, exc.type)
            err.headers.update(
                {k.decode(): v.decode() for k, v in self._route_headers(ctx, None, None)}
            )
            await self._error(send, fmt, err, ctx)
        except Exception:
            log.exception("internal error in request %s", ctx.request_id)
            if not ctx.settled:
                await self._settle(ctx, 500, None, "internal_error")
            await self._error(
                send,
                fmt,
                GatewayError(
                    500,
                    f"Internal gateway error (request {ctx.request_id}).",
                    type="api_error",
                    code="internal_error",
                ),
                ctx,
            )

    async def _admit(self, ctx: _Ctx, plan: Plan) -> None:
        ctx.plan = plan
        assert ctx.principal is not None
        ctx.reservation = await self.gw.spend.admit(
            ctx.principal,
            plan.chain[0].info,
            prompt_tokens=plan.prompt_tokens,
            max_cost_usd=plan.max_cost_usd,
        )

    # -- endpoints -------------------------------------------------------------------------

    async def chat_completions(self, scope: dict, receive: Callable, send: Send) -> None:
        async def run(ctx: _Ctx, body: dict[str, Any]) -> None:
            req = ChatRequest(body)
            await self._chat(ctx, req, send)

        await self._model_call(scope, receive, send, "chat.completions", OPENAI, run)

    async def messages(self, scope: dict, receive: Callable, send: Send) -> None:
        async def run(ctx: _Ctx, body: dict[str, Any]) -> None:
            req = ChatRequest(anthropic_to_openai_request(body))
            await self._chat(ctx, req, send)

        await self._model_call(scope, receive, send, "messages", ANTHROPIC, run)

    async def responses(self, scope: dict, receive: Callable, send: Send) -> None:
        """``POST /v1/responses``: OpenAI's Responses API over the chat pipeline
        (thrifty/gateway/responses.py says what is translated and what is refused)."""

        async def run(ctx: _Ctx, body: dict[str, Any]) -> None:
            ctx.responses = ResponsesRequest(body, ctx.request_id, self.gw.router.is_profile)
            await self._chat(ctx, ChatRequest(ctx.responses.chat), send)

        await self._model_call(scope, receive, send, "responses", RESPONSES, run)

    async def _chat(self, ctx: _Ctx, req: ChatRequest, send: Send) -> None:
        assert ctx.principal is not None
        plan = self.gw.plan_chat(ctx.principal, req)
        await self._admit(ctx, plan)
        ctx.served = Served()
        if req.stream:
            ctx.stream = True
            await self._chat_stream(ctx, req, send)
            return
        body = await self.gw.chat(plan, req, ctx.served)
        usage = _usage_of(body, plan.prompt_tokens)
        cost, frontier = await self._settle(ctx, 200, usage, None)
        if ctx.fmt == ANTHROPIC:
            out = orjson.dumps(openai_to_anthropic_response(body, ctx.served.model.info.name))
        elif ctx.responses is not None:
            out = orjson.dumps(ctx.responses.response(body, ctx.served.model.info.name, usage))
        else:
            out = orjson.dumps(body)
        await self._send(send, 200, out, JSON_HEADERS + self._route_headers(ctx, cost, frontier))

    async def _chat_stream(self, ctx: _Ctx, req: ChatRequest, send: Send) -> None:
        """Stream chunks as they come. Retries/fallbacks happen before the first chunk; the chunks
        that end the answer (finish_reason, usage) are held back until the request is settled, and a
        break mid-way ends the stream with an error event, never a silent truncated 200."""
        assert ctx.plan is not None and ctx.served is not None
        first, rest = await self.gw.chat_stream(ctx.plan, req, ctx.served)
        conv = (
            OpenAIStreamToAnthropic(ctx.served.model.info.name, ctx.plan.prompt_tokens)
            if ctx.fmt == ANTHROPIC
            else ctx.responses.start_stream(ctx.served.model.info.name)
            if ctx.responses is not None
            else None
        )  # the client's format, when it is not chat completions
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": SSE_HEADERS + self._route_headers(ctx, None, None),
            }
        )
        ctx.started = True
        held: list[dict[str, Any]] = []
        usage_body: dict[str, Any] | None = None
        completion_chars = 0

        def encode(chunk: dict[str, Any]) -> bytes:
            if conv is not None:
                return conv.feed(chunk)
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        batch: list[dict[str, Any]] | None = first
        error: UpstreamError | None = None
        while batch is not None:
            out = []
            for chunk in batch:
                if chunk.get("usage"):
                    usage_body = chunk
                choices = chunk.get("choices") or ()
                for c in choices:
                    content = (c.get("delta") or {}).get("content")
                    if content:
                        completion_chars += len(content)
                if not choices or any(c.get("finish_reason") for c in choices):
                    held.append(chunk)
                else:
                    out.append(encode(chunk))
            if out:  # one write for what one upstream read brought
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            try:
                batch = await rest.__anext__()
            except StopAsyncIteration:
                batch = None
            except UpstreamError as exc:
                error, batch = exc, None
        if error is not None:
            usage = Usage(ctx.plan.prompt_tokens, completion_chars // 4)
            await self._settle(ctx, 502, usage, "stream_broken")
            message = f"The upstream stream broke mid-answer: {error.message}"
            await send(
                {
                    "type": "http.response.body",
                    "body": conv.fail(message, usage)
                    if isinstance(conv, ResponsesStream)
                    else _stream_error(ctx.fmt, message, "stream_broken"),
                    "more_body": False,
                }
            )
            return
        usage = _usage_of(usage_body, ctx.plan.prompt_tokens)
        if usage_body is None:
            # The upstream sent no usage (llama.cpp's server, some proxies): bill an estimate,
            # and still give a client that asked for usage its final usage chunk.
            usage.completion_tokens = max(1, completion_chars // 4)
            if req.include_usage and conv is None:
                held.append(_usage_chunk(held, ctx, usage))
        cost, frontier = await self._settle(ctx, 200, usage, None)
        tail = b""
        for chunk in held:
            if (
                conv is None
                and not req.include_usage
                and chunk.get("usage")
                and not chunk.get("choices")
            ):
                continue  # the usage chunk thrifty asked the upstream for, not the client
            tail += encode(chunk)
        if isinstance(conv, OpenAIStreamToAnthropic):
            tail += conv.end()
        else:  # chat chunks end with [DONE]; a Response stream with its completed event
            tail += f": thrifty cost_usd={cost:.9f} frontier_cost_usd={frontier:.9f}\n\n".encode()
            tail += conv.end(usage) if conv is not None else b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def embeddings(self, scope: dict, receive: Callable, send: Send) -> None:
        async def run(ctx: _Ctx, body: dict[str, Any]) -> None:
            req = EmbeddingsRequest(body)
            assert ctx.principal is not None
            plan = self.gw.plan_embeddings(
                ctx.principal, req.model, req.prompt_tokens, req.prompt_tokens_max
            )
            await self._admit(ctx, plan)
            ctx.served = Served()
            result = await self.gw.embeddings(plan, body, ctx.served)
            usage = _usage_of(result, req.prompt_tokens)
            cost, frontier = await self._settle(ctx, 200, usage, None)
            await self._send(
                send,
                200,
                orjson.dumps(result),
                JSON_HEADERS + self._route_headers(ctx, cost, frontier),
            )

        await self._model_call(scope, receive, send, "embeddings", OPENAI, run)

    def _model_objects(self, principal: Principal) -> list[dict[str, Any]]:
        """The models ``principal`` may call, then the routing profiles when routing is open to
        it (and the extra profiles, such as ``auto-cascade``, whose models it may use)."""
        created = 1700000000
        names, routing = self.gw.visible(principal)
        models = self.gw.models
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": models[n].info.provider}
            for n in names
        ]
        if routing:
            for profile in sorted({"auto", *self.gw.router.profiles, *self.config.profiles}):
                data.append(
                    {
                        "id": profile,
                        "object": "model",
                        "created": created,
                        "owned_by": "thrifty-router",
                    }
                )
        allowed = set(names)
        for pid, (owner, members) in self.extra_profiles.items():
            if any(m in allowed for m in members) and not any(d["id"] == pid for d in data):
                data.append({"id": pid, "object": "model", "created": created, "owned_by": owner})
        return data

    async def list_models(self, scope: dict, receive: Callable, send: Send) -> None:
        """``GET /v1/models``: with spend control, the caller's key is required (401 otherwise)
        and only what its key and team policies permit is listed."""
        try:
            principal = await self._authenticate(scope)
        except SpendError as exc:
            await self._error(send, OPENAI, exc, None)
            return
        data = self._model_objects(principal)
        await self._send(send, 200, orjson.dumps({"object": "list", "data": data}), JSON_HEADERS)

    async def retrieve_model(self, scope: dict, receive: Callable, send: Send, model: str) -> None:
        """``GET /v1/models/{model}``: the model object, or 404 ``model_not_found`` when the
        gateway does not serve it or the caller's policies do not permit it."""
        try:
            principal = await self._authenticate(scope)
        except SpendError as exc:
            await self._error(send, OPENAI, exc, None)
            return
        for obj in self._model_objects(principal):
            if obj["id"] == model:
                await self._send(send, 200, orjson.dumps(obj), JSON_HEADERS)
                return
        await self._error(
            send,
            OPENAI,
            GatewayError(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            ),
            None,
        )

    async def healthz(self, scope: dict, receive: Callable, send: Send) -> None:
        await self._send(send, 200, b'{"status":"ok"}', JSON_HEADERS)

    async def readyz(self, scope: dict, receive: Callable, send: Send) -> None:
        ready = self.started
        body = {
            "status": "ready" if ready else "starting",
            "models": len(self.gw.models),
            "router": self.gw.router.router is not None,
        }
        if self.gw.router.error:
            body["router_error"] = self.gw.router.error
        await self._send(send, 200 if ready else 503, orjson.dumps(body), JSON_HEADERS)

    async def metrics_endpoint(self, scope: dict, receive: Callable, send: Send) -> None:
        await self._send(
            send, 200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4")]
        )


def _stream_error(fmt: str, message: str, code: str) -> bytes:
    """The last event of a stream that cannot finish: the SDKs raise it as an API error."""
    if fmt == ANTHROPIC:
        return sse_event(
            "error", {"type": "error", "error": {"type": "api_error", "message": message}}
        )
    return (
        b"data: "
        + orjson.dumps(
            {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
        )
        + b"\n\n"
    )


def _upstream_to_gateway(exc: UpstreamError) -> GatewayError:
    """Upstream failures as the client sees them: its 4xx as is, otherwise 502/503/504."""
    if exc.type == "replay_unknown_prompt":
        return GatewayError(exc.status, exc.message, code=exc.code or exc.type)
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


def create_app(
    config: GatewayConfig,
    *,
    spend: SpendControl,
    mounts: Mapping[str, ASGIApp] | None = None,
    router: Any | None = None,
    providers: Mapping[str, Any] | None = None,
) -> GatewayApp:
    """The gateway ASGI app for ``config``.

    ``spend`` is called on every request (authenticate, allowed, admit, settle); ``mounts`` maps
    path prefixes (e.g. ``"/admin"``) to ASGI apps; ``router`` overrides the learned router (an
    object with the ``thrifty.router.Router`` interface); ``providers`` overrides adapters by name.
    """
    provs = dict(build_providers(config.providers))
    provs.update(providers or {})
    auto = AutoRouter(config, router)
    frontier = (
        config.models[config.frontier_model].info
        if config.frontier_model in config.models
        else None
    )
    if frontier is None:
        frontier = Catalog.load(config.data_dir).model(config.frontier_model, "openai")
    gateway = Gateway(config, spend, provs, auto, frontier, Metrics())
    return GatewayApp(gateway, dict(mounts or {}))
