"""The gateway as a raw ASGI application: wire formats in, the pipeline, wire formats out.

No framework on the model endpoints: a dict of routes and hand-written plumbing keep the
per-request overhead in microseconds. Each endpoint authenticates once, reads the body once
(bounded), parses it once into a :class:`~thrifty.pipeline.call.Call`, runs the pipeline
(:mod:`thrifty.pipeline.pipeline`: caches, cascade, deferral, routing, the upstream call,
billing) and renders the result in its own format:

* ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` (Anthropic),
  ``POST /v1/responses`` (OpenAI's Responses API), ``POST /v1/embeddings``;
* ``GET /v1/models`` and ``GET /v1/models/{model}`` (with spend control: the caller's key is
  required and only what its policies permit is listed), ``GET /healthz``, ``GET /readyz``,
  ``GET /metrics``; other ASGI apps (the admin API, the dashboard, ``/v1/files`` and
  ``/v1/batches``) are mounted under path prefixes.

Every response of a model call carries ``x-thrifty-*`` headers: the served model, why it
was chosen, its cost in USD, what the default frontier model would have cost, the request id
and the retries/fallbacks it took (and ``x-thrifty-cache``, ``x-thrifty-cascade`` where those
stages acted). A stream's headers leave before its cost is known, so every stream carries the
cost in an SSE comment line near its end (``: thrifty cost_usd=... frontier_cost_usd=...``;
clients ignore comments) and in the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from thrifty.bodylimit import BodyTooLarge, ClientDisconnected, declared_length, read_body
from thrifty.errors import GatewayError, ThriftyError
from thrifty.gateway.budget_gauges import budget_gauges
from thrifty.gateway.errors import ANTHROPIC, OPENAI, RESPONSES, error_body, stream_error
from thrifty.gateway.metrics_share import SharedMetrics
from thrifty.gateway.responses_api import ResponsesRequest
from thrifty.pipeline.call import CHAT, EMBEDDINGS, MESSAGES, Call
from thrifty.pipeline.call import RESPONSES as RESPONSES_ENDPOINT
from thrifty.pipeline.defer_stage import wants_deferral
from thrifty.pipeline.metrics import rejection_reason
from thrifty.pipeline.pipeline import Answer, Deferred, Pipeline
from thrifty.pipeline.schemas import ChatRequest, EmbeddingsRequest, parse_json
from thrifty.pipeline.stream import AnswerStream
from thrifty.providers.base import Usage
from thrifty.providers.translate import (
    OpenAIStreamToAnthropic,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from thrifty.spend.contract import AuthError, Principal

log = logging.getLogger("thrifty.gateway")
security_log = logging.getLogger("thrifty.security")

ASGIApp = Callable[
    [dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]
]
Send = Callable[[dict], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_MODEL_PREFIXES = ("/v1/models/", "/models/")  # GET /v1/models/{model}
# Seconds a call runs before a task watches for its client going away: a client that leaves
# sooner is noticed then (its call is still cancelled and settled).
WATCH_AFTER = 0.1


class _Run:
    """A model call in progress, as :class:`DisconnectWatch` sees it."""

    __slots__ = ("gone", "receive", "since", "task", "watcher")

    def __init__(self, task: asyncio.Task, receive: Callable, since: float) -> None:
        self.task, self.receive, self.since = task, receive, since
        self.gone = False
        self.watcher: asyncio.Future | None = None


class DisconnectWatch:
    """Notices clients that go away while their call runs. A call that has run for
    :data:`WATCH_AFTER` seconds gets a small task waiting on its ``receive`` for the disconnect;
    most calls end sooner and never have one. One timer for all calls in progress (a timer per
    call cost more than the rest of a cache hit's bookkeeping)."""

    def __init__(self) -> None:
        self._runs: dict[_Run, None] = {}  # in start order
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def add(self, task: asyncio.Task, receive: Callable) -> _Run:
        loop = task.get_loop()
        run = _Run(task, receive, loop.time())
        self._runs[run] = None
        if self._timer is None or self._loop is not loop:  # (an app served on a new loop)
            self._loop = loop
            self._timer = loop.call_later(WATCH_AFTER, self._sweep, loop)
        return run

    def discard(self, run: _Run) -> None:
        del self._runs[run]
        if run.watcher is not None:
            run.watcher.cancel()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a timer of a loop the app no longer runs on
        self._timer = None
        cutoff = loop.time() - WATCH_AFTER
        for run in self._runs:
            if run.since > cutoff:
                break  # started later, as every run after it
            if run.watcher is None and run.task.get_loop() is loop:
                run.watcher = asyncio.ensure_future(_watch(run), loop=loop)
        if self._runs:
            self._timer = loop.call_later(WATCH_AFTER, self._sweep, loop)


async def _watch(run: _Run) -> None:
    message = await run.receive()
    if message.get("type") == "http.disconnect":
        run.gone = True
        run.task.cancel()


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


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Heads:
    """The request headers a model call reads, found in one pass over them. The credential is
    ``Authorization``, else ``x-api-key`` (Anthropic's clients send that)."""

    __slots__ = ("cache", "credential", "defer", "length")

    def __init__(self, scope: dict) -> None:
        auth = cache = defer = length = None
        for name, value in scope["headers"]:
            if name == b"authorization" or (name == b"x-api-key" and auth is None):
                auth = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"x-thrifty-cache":
                cache = value.decode("latin-1")
            elif name == b"x-thrifty-defer":
                defer = value.decode("latin-1")
        self.credential: str | None = auth
        self.length: bytes | None = length
        self.cache: str | None = cache
        self.defer: str | None = defer


class Wire:
    """How one endpoint's requests are parsed and its answers rendered."""

    __slots__ = ("endpoint", "fmt", "responses")

    def __init__(self, endpoint: str, fmt: str) -> None:
        self.endpoint, self.fmt = endpoint, fmt
        self.responses: ResponsesRequest | None = None

    def parse(self, call: Call, body: dict[str, Any], is_profile: Callable[[str], bool]) -> None:
        if self.fmt == ANTHROPIC:
            call.chat = ChatRequest(anthropic_to_openai_request(body))
        elif self.fmt == RESPONSES:
            self.responses = ResponsesRequest(body, call.request_id, is_profile)
            call.chat = ChatRequest(self.responses.chat)
        else:
            call.chat = ChatRequest(body)

    def render(self, answer: Answer, model: str) -> bytes:
        if self.fmt == ANTHROPIC:
            return orjson.dumps(openai_to_anthropic_response(answer.body, model))
        if self.responses is not None:
            return orjson.dumps(self.responses.response(answer.body, model, answer.usage))
        return answer.json()

    def encoder(self, model: str, prompt_tokens: int) -> Any:
        if self.fmt == ANTHROPIC:
            return OpenAIStreamToAnthropic(model, prompt_tokens)
        if self.responses is not None:
            return self.responses.start_stream(model)
        return None


def _chunk(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _usage_chunk(held: list[dict[str, Any]], call: Call, usage: Usage) -> dict[str, Any]:
    """The final ``stream_options.include_usage`` chunk, shaped like the stream's own chunks."""
    ref = held[-1] if held else {}
    served = call.served
    return {
        "id": ref.get("id") or call.request_id,
        "object": "chat.completion.chunk",
        "created": ref.get("created") or int(call.ts),
        "model": ref.get("model")
        or (served.model.info.name if served is not None and served.model else ""),
        "choices": [],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


class GatewayApp:
    def __init__(
        self,
        pipeline: Pipeline,
        mounts: Mapping[str, ASGIApp],
        *,
        on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
        on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
        shared_metrics: SharedMetrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.gw = pipeline.gw
        self.config = self.gw.config
        self.metrics = self.gw.metrics
        self._watch = DisconnectWatch()
        self.shared_metrics = shared_metrics  # the other workers' counts (serve --workers N)
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        self.on_startup = list(on_startup)
        self.on_shutdown = list(on_shutdown)
        # Profiles served by a pipeline stage (the cascade's "auto-cascade"), listed by /v1/models
        # for callers whose policies permit one of their models: id -> (owner, models).
        self.extra_profiles: dict[str, tuple[str, tuple[str, ...]]] = {}
        if pipeline.cascade is not None:
            self.extra_profiles["auto-cascade"] = ("thrifty-cascade", tuple(pipeline.cascade.models))
        self.started = False
        self.start_lock: asyncio.Lock | None = None
        self.router_watch: asyncio.Task | None = None
        chat, messages = Wire(CHAT, OPENAI), Wire(MESSAGES, ANTHROPIC)
        responses = Wire(RESPONSES_ENDPOINT, RESPONSES)
        self.routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat_like(chat),
            ("POST", "/chat/completions"): self._chat_like(chat),
            ("POST", "/v1/messages"): self._chat_like(messages),
            ("POST", "/v1/responses"): self._chat_like(responses),
            ("POST", "/responses"): self._chat_like(responses),
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/models"): self.list_models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_endpoint,
        }

    @property
    def runner(self) -> Any:
        """The batch runner (None with ``[batches] enabled = false``)."""
        return self.pipeline.defer.runner if self.pipeline.defer is not None else None

    @property
    def batch_store(self) -> Any:
        """The store of batches and uploaded files (None with batches disabled)."""
        return self.pipeline.defer.store if self.pipeline.defer is not None else None

    @property
    def pending_stores(self) -> int:
        """Answers still being written to the response cache (stored after the response)."""
        return self.pipeline.cache.pending if self.pipeline.cache is not None else 0

    # -- ASGI plumbing -----------------------------------------------------------------------

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
            headers = list(JSON_HEADERS)
            if known:
                allow = sorted({m for (m, p) in self.routes if p == path} or {"GET"})
                headers.append((b"allow", ", ".join(allow).encode()))
            err = GatewayError(status, msg, code="not_found" if known is False else "method_not_allowed")
            await _send(send, status, error_body(fmt, err), headers)
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
            for hook in self.on_startup:
                await hook()
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
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:  # closing must not stop the others
                log.exception("shutdown step failed")
        for provider in self.gw.providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing provider failed")
        try:
            await self.gw.spend.close()
        except Exception:
            log.exception("closing spend control failed")

    # -- one model call ------------------------------------------------------------------------

    async def _authenticate(self, scope: dict) -> Principal:
        return await self.gw.spend.authenticate(_Heads(scope).credential)

    async def _begin(
        self, scope: dict, receive: Callable, send: Send, endpoint: str, fmt: str
    ) -> tuple[Call, bytes, _Heads] | None:
        """Authenticate, then read the body: the call, its body and its headers, or None once
        the refusal has been sent. A request without a valid key is not a principal's spend: it
        is counted and logged (no prompt text), not billed."""
        heads = _Heads(scope)
        try:
            principal = await self.gw.spend.authenticate(heads.credential)
        except ThriftyError as exc:
            if isinstance(exc, AuthError):
                client = scope.get("client") or ("-", 0)
                security_log.warning(
                    "refused %s %s from %s: %s", scope["method"], scope["path"], client[0], exc.code
                )
            self.metrics.observe(endpoint, "-", exc.status, 0.0)
            reason = rejection_reason(exc.status, exc.type)
            if reason is not None:
                self.metrics.rejections.inc((reason,))
            await self._error(send, fmt, exc, None)
            return None
        call = Call(endpoint, principal)
        try:
            raw = await read_body(
                receive, self.config.max_body_bytes, declared_length(heads.length)
            )
        except BodyTooLarge:
            err = GatewayError(
                413,
                f"Request body is larger than the gateway's limit of "
                f"{self.config.max_body_bytes} bytes.",
                code="request_too_large",
                type="request_too_large" if fmt == ANTHROPIC else "invalid_request_error",
            )
            await self.pipeline.refused(call, err)
            await self._error(send, fmt, err, call)
            return None
        except ClientDisconnected:
            err = GatewayError(499, "The client disconnected while sending the request.",
                               code="client_disconnected")
            await self.pipeline.refused(call, err)
            return None
        return call, raw, heads

    def _chat_like(self, wire: Wire) -> Callable[[dict, Callable, Send], Awaitable[None]]:
        async def endpoint(scope: dict, receive: Callable, send: Send) -> None:
            await self._chat(scope, receive, send, Wire(wire.endpoint, wire.fmt))

        return endpoint

    async def _chat(self, scope: dict, receive: Callable, send: Send, wire: Wire) -> None:
        begun = await self._begin(scope, receive, send, wire.endpoint, wire.fmt)
        if begun is None:
            return
        call, raw, heads = begun
        started = False
        try:
            try:
                body = parse_json(raw)
                wire.parse(call, body, self.gw.router.is_profile)
                call.cache_header = heads.cache
                defer = heads.defer
                if defer is not None and wants_deferral(defer.strip().lower()):
                    call.defer = "batch"
            except ThriftyError as exc:
                await self.pipeline.refused(call, exc)
                raise
            outcome = await self._run_watching(call, receive, body)
            if outcome is None:
                return  # the client went away; the pipeline settled the call
            if isinstance(outcome, AnswerStream):
                started = True
                await self._relay(call, wire, outcome, receive, send)
            elif isinstance(outcome, Deferred):
                headers = JSON_HEADERS + [
                    (b"x-request-id", call.request_id.encode()),
                    (b"x-thrifty-defer", b"batch"),
                    (b"location", f"/v1/batches/{outcome.batch['id']}".encode()),
                ]
                await _send(send, 202, orjson.dumps(outcome.batch), headers)
            else:
                model = self._served_name(call)
                await _send(
                    send,
                    200,
                    wire.render(outcome, model),
                    JSON_HEADERS + self._route_headers(call, outcome.cost_usd, outcome.frontier_cost_usd),
                )
        except ThriftyError as exc:
            if started:
                return
            await self._error(send, wire.fmt, exc, call)
        except Exception:  # noqa: BLE001 (a bug: logged by _internal, answered without a traceback)
            err = await self._internal(call)
            if not started:
                await self._error(send, wire.fmt, err, call)

    async def _run_watching(self, call: Call, receive: Callable, body: dict[str, Any]) -> Any:
        """Run the pipeline in this task while :class:`DisconnectWatch` looks out for the client
        going away: a disconnect cancels the run (the upstream call is cancelled and the
        pipeline settles the request). None when that happened."""
        current = asyncio.current_task()
        assert current is not None
        run = self._watch.add(current, receive)
        try:
            return await self.pipeline.run(call, body)
        except asyncio.CancelledError:
            if not run.gone:
                raise  # the server is stopping: not ours to swallow
            current.uncancel()
            return None
        finally:
            self._watch.discard(run)

    def _served_name(self, call: Call) -> str:
        served = call.served
        return served.model.info.name if served is not None and served.model is not None else call.model

    async def _relay(
        self, call: Call, wire: Wire, stream: AnswerStream, receive: Callable, send: Send
    ) -> None:
        """Send a stream as it comes; the chunks that end it follow once it is settled, then
        the cost comment and the format's end (or, if it broke, an error event)."""
        assert call.chat is not None
        model = self._served_name(call)
        conv = wire.encoder(model, stream.prompt_tokens)
        encode = conv.feed if conv is not None else _chunk
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": SSE_HEADERS + self._route_headers(call, None, None),
            }
        )
        try:
            async for batch in stream:
                await send(
                    {
                        "type": "http.response.body",
                        # (a read usually brings one chunk: then no join)
                        "body": encode(batch[0]) if len(batch) == 1 else b"".join(map(encode, batch)),
                        "more_body": True,
                    }
                )
        except BaseException:
            await asyncio.shield(stream.aclose())
            raise
        if stream.error is not None:
            message = stream.error.message
            if wire.responses is not None:
                tail = conv.fail(message, stream.usage)
            else:
                tail = stream_error(wire.fmt, message, stream.error.code)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return
        usage = stream.usage or Usage(stream.prompt_tokens, 0)
        held = stream.held
        include_usage = call.chat.include_usage
        if not stream.usage_reported and include_usage and conv is None:
            held.append(_usage_chunk(held, call, usage))
        out = []
        for chunk in held:
            if conv is None and not include_usage and chunk.get("usage") and not chunk.get("choices"):
                continue  # the usage chunk thrifty asked the upstream for, not the client
            out.append(encode(chunk))
        out.append(
            f": thrifty cost_usd={stream.cost:.9f} frontier_cost_usd={stream.frontier:.9f}\n\n".encode()
        )
        if isinstance(conv, OpenAIStreamToAnthropic):
            out.append(conv.end())
        elif conv is not None:
            out.append(conv.end(usage))
        else:
            out.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"".join(out), "more_body": False})

    async def embeddings(self, scope: dict, receive: Callable, send: Send) -> None:
        begun = await self._begin(scope, receive, send, EMBEDDINGS, OPENAI)
        if begun is None:
            return
        call, raw, _ = begun
        try:
            try:
                call.embeddings = EmbeddingsRequest(parse_json(raw))
            except ThriftyError as exc:
                await self.pipeline.refused(call, exc)
                raise
            answer = await self.pipeline.embeddings(call)
            await _send(
                send,
                200,
                orjson.dumps(answer.body),
                JSON_HEADERS + self._route_headers(call, answer.cost_usd, answer.frontier_cost_usd),
            )
        except ThriftyError as exc:
            await self._error(send, OPENAI, exc, call)
        except Exception:  # noqa: BLE001 (a bug: logged by _internal, answered without a traceback)
            await self._error(send, OPENAI, await self._internal(call), call)

    async def _internal(self, call: Call) -> GatewayError:
        """A bug inside the gateway: logged with its traceback (never the body), settled as a
        500, and answered without a traceback."""
        log.exception("internal error in request %s", call.request_id)
        err = GatewayError(
            500,
            f"Internal gateway error (request {call.request_id}).",
            type="api_error",
            code="internal_error",
        )
        await self.pipeline.refused(call, err)
        return err

    # -- rendering -------------------------------------------------------------------------------

    async def _error(self, send: Send, fmt: str, exc: ThriftyError, call: Call | None) -> None:
        headers = list(JSON_HEADERS)
        for k, v in exc.headers.items():
            headers.append((k.lower().encode(), str(v).encode()))
        if call is not None:
            names = {k for k, _ in headers}
            headers.extend(h for h in self._route_headers(call, None, None) if h[0] not in names)
        await _send(send, exc.status, error_body(fmt, exc), headers)

    def _route_headers(
        self, call: Call, cost: float | None, frontier: float | None
    ) -> list[tuple[bytes, bytes]]:
        served, plan = call.served, call.plan
        h = [(b"x-request-id", call.request_id.encode())]
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
        if call.hit is not None:
            h.append((b"x-thrifty-cache", b"miss" if call.hit == "miss" else f"hit-{call.hit}".encode()))
            if call.hit != "miss":
                h.append((b"x-thrifty-saved-usd", f"{call.saved_usd:.9f}".encode()))
        if call.cascade:
            h.append((b"x-thrifty-cascade", " > ".join(call.cascade).encode()))
        if cost is not None:
            h.append((b"x-thrifty-cost-usd", f"{cost:.9f}".encode()))
            h.append((b"x-thrifty-frontier-cost-usd", f"{frontier:.9f}".encode()))
        return h

    # -- models and health -----------------------------------------------------------------------

    def _model_objects(self, principal: Principal) -> list[dict[str, Any]]:
        """The models ``principal`` may call, then the routing profiles when routing is open to
        it (and the stages' profiles, such as ``auto-cascade``, whose models it may use)."""
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
                    {"id": profile, "object": "model", "created": created, "owned_by": "thrifty-router"}
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
        except ThriftyError as exc:
            await self._error(send, OPENAI, exc, None)
            return
        data = self._model_objects(principal)
        await _send(send, 200, orjson.dumps({"object": "list", "data": data}), JSON_HEADERS)

    async def retrieve_model(self, scope: dict, receive: Callable, send: Send, model: str) -> None:
        """``GET /v1/models/{model}``: the model object, or 404 ``model_not_found`` when the
        gateway does not serve it or the caller's policies do not permit it."""
        try:
            principal = await self._authenticate(scope)
        except ThriftyError as exc:
            await self._error(send, OPENAI, exc, None)
            return
        for obj in self._model_objects(principal):
            if obj["id"] == model:
                await _send(send, 200, orjson.dumps(obj), JSON_HEADERS)
                return
        err = GatewayError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
        await self._error(send, OPENAI, err, None)

    async def healthz(self, scope: dict, receive: Callable, send: Send) -> None:
        await _send(send, 200, b'{"status":"ok"}', JSON_HEADERS)

    async def readyz(self, scope: dict, receive: Callable, send: Send) -> None:
        ready = self.started
        body = {
            "status": "ready" if ready else "starting",
            "models": len(self.gw.models),
            "router": self.gw.router.router is not None,
        }
        if self.gw.router.error:
            body["router_error"] = self.gw.router.error
        await _send(send, 200 if ready else 503, orjson.dumps(body), JSON_HEADERS)

    async def metrics_endpoint(self, scope: dict, receive: Callable, send: Send) -> None:
        """Every worker's counts summed (this one's live, the others' as last written), then
        the budget gauges read from the spend database."""
        others = self.shared_metrics.others() if self.shared_metrics is not None else ()
        gauges = await budget_gauges(self.gw.spend)
        await _send(
            send,
            200,
            self.metrics.render(others, gauges),
            [(b"content-type", b"text/plain; version=0.0.4")],
        )
