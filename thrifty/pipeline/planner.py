"""Planning and execution, the pipeline's core stages (thrifty/pipeline/pipeline.py runs them):
plan (resolve or route the model, apply policy and capabilities, bound the cost), then call
upstream with prefix affinity, retries, breakers and fallbacks.

``Plan`` holds everything decided before the upstream call; ``Served`` what happened. Pricing
and settling are billing's job (thrifty/pipeline/billing.py), exactly once per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from thrifty.catalog.model import ModelInfo
from thrifty.config import Deployment, GatewayConfig, ModelConfig
from thrifty.errors import GatewayError
from thrifty.pipeline.metrics import Metrics
from thrifty.pipeline.reliability import PROBE, CircuitBreaker, backoff_delay, order_deployments
from thrifty.pipeline.routing import AutoRouter
from thrifty.pipeline.schemas import ChatRequest
from thrifty.providers.base import Provider, UpstreamError
from thrifty.router.learning import RouteTrace
from thrifty.spend.contract import PolicyDenied, Principal, SpendControl
from thrifty.spend.money import NANOS_PER_USD
from thrifty.spend.pricing import max_cost_nanos

log = logging.getLogger("thrifty.gateway")


@dataclass(slots=True)
class Plan:
    requested: str
    chain: list[ModelConfig]  # the chosen model first, then its fallbacks (all allowed by policy)
    reason: str
    prompt_tokens: int
    max_output_tokens: int
    max_cost_usd: float
    scores: dict[str, float] | None = None
    route: RouteTrace | None = None  # a decision of the learned router (thrifty.router.learning)
    named: bool = False  # chain[0] is the model the client named (its body is not adapted)
    # hardening: model name -> the deployments policy permits for this principal (None: all).
    deployments: dict[str, tuple[Deployment, ...]] | None = None
    # model name -> the most one attempt on it can cost (None: max_cost_usd for every model)
    bounds: dict[str, float] | None = None

    def bound(self, model: str) -> float:
        """The most one attempt on ``model`` can cost (what an attempt of unknown cost is
        charged)."""
        if self.bounds is None:
            return self.max_cost_usd
        return self.bounds.get(model, self.max_cost_usd)


@dataclass(slots=True)
class Served:
    """Who answered (set once an upstream call succeeds) and what it took to get there."""

    model: ModelConfig | None = None
    deployment: Deployment | None = None
    retries: int = 0
    fallbacks: int = 0
    errors: list[str] = field(default_factory=list)
    dropped: tuple[str, ...] = ()  # parameters removed for the serving model (x-thrifty-dropped-params)
    renamed: bool = False  # max_tokens sent as max_completion_tokens (x-thrifty-renamed-params)
    # Attempts that reached the upstream and got no answer (lost connection, timeout): their
    # cost is unknowable, so each is charged its upper bound (Plan.bound), summed here.
    unknown_attempts: int = 0
    unknown_cost_usd: float = 0.0


# Sampling parameters OpenAI's reasoning models refuse (400 unsupported_value / unsupported_parameter
# for any non-default value): dropped when the gateway, not the client, chose such a model.
SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
)
# What each need is called in errors, and the request parameter that carries it.
_NEED_TEXT = {
    "function_calling": ("function calling", "tools"),
    "vision": ("image input", "messages"),
    "response_schema": ("structured output (response_format json_schema)", "response_format"),
}


def reasoning_body(
    body: dict[str, Any], drop_sampling: bool
) -> tuple[dict[str, Any], tuple[str, ...], bool]:
    """``body`` as an OpenAI reasoning model takes it: ``max_tokens`` sent as
    ``max_completion_tokens`` (an explicit ``max_completion_tokens`` wins) and, with
    ``drop_sampling``, no sampling parameters. Returns (body, dropped names, renamed)."""
    dropped = tuple(k for k in SAMPLING_PARAMS if body.get(k) is not None) if drop_sampling else ()
    if "max_tokens" not in body and not dropped:
        return body, (), False
    out = {k: v for k, v in body.items() if k != "max_tokens" and k not in dropped}
    renamed = body.get("max_tokens") is not None
    if renamed and out.get("max_completion_tokens") is None:
        out["max_completion_tokens"] = body["max_tokens"]
    return out, dropped, renamed


def _missing(mc: ModelConfig, needs: tuple[str, ...]) -> list[str]:
    return [n for n in needs if n in mc.lacks]


def _max_output(info: ModelInfo, requested: int | None, prompt_tokens: int) -> int:
    if requested:
        return requested
    if info.max_output_tokens:
        return info.max_output_tokens
    if info.context_window:
        return max(1, info.context_window - prompt_tokens)
    return 4096


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        spend: SpendControl,
        providers: dict[str, Provider],
        router: AutoRouter,
        frontier: ModelInfo | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.spend = spend
        self.providers = providers
        self.router = router
        self.frontier = frontier
        self.metrics = metrics or Metrics()
        self.models = config.models
        # Optional deployment chooser (e.g. prefix affinity for self-hosted pools): an object with
        # ``model in it``, ``order(model, body) -> [Deployment]``, ``acquire``/``release(model, dep)``.
        self.affinity: Any | None = None
        self.breakers = {
            d.key: CircuitBreaker(config.breaker)
            for m in config.models.values()
            for d in m.deployments
        }

    # -- planning --------------------------------------------------------------------------

    # hardening: policy judges deployments (each has its own provider, origin and regions);
    # a model is permitted when at least one of its deployments is.
    def _permitted(
        self, principal: Principal, models: list[ModelConfig], *, strict: bool = False
    ) -> dict[str, tuple[Deployment, ...]]:
        """Model name -> its deployments ``principal``'s policies permit (models with none are
        left out). ``strict``: let the :class:`PolicyDenied` of the spend control (which says
        why) propagate when it permits none."""
        infos = [d.info or m.info for m in models for d in m.deployments]
        if not infos:
            return {}
        try:
            kept = self.spend.allowed(principal, infos)
        except PolicyDenied:
            if strict:
                raise
            return {}
        if len(kept) == len(infos):  # all of them (the usual case): nothing to filter
            return {m.info.name: m.deployments for m in models}
        ok = {id(i) for i in kept}
        out = {}
        for m in models:
            deps = tuple(d for d in m.deployments if id(d.info or m.info) in ok)
            if deps:
                out[m.info.name] = deps
        return out

    def visible(self, principal: Principal) -> tuple[list[str], bool]:
        """What ``principal`` may call (``GET /v1/models``): the configured models its policies
        permit (some deployment of), in config order, and whether routing (``auto`` and the
        profiles) is open to it, i.e. some routable model is permitted (with no routable model
        at all, the profiles stay listed and ``auto`` answers why it cannot route)."""
        ok = set(self._permitted(principal, list(self.models.values())))
        names = [name for name, mc in self.models.items() if mc.info.name in ok]
        known = self.router.models
        pool = [
            m.info.name
            for m in self.models.values()
            if m.route
            and m.mode == "chat"
            and m.info.priced
            and (not known or m.info.name in known)
        ]
        return names, (not pool or any(n in ok for n in pool))

    def _fallbacks(
        self,
        principal: Principal,
        first: ModelConfig,
        prompt_tokens: int,
        needs: tuple[str, ...] = (),
    ) -> tuple[list[ModelConfig], dict[str, tuple[Deployment, ...]]]:
        """``first``'s fallbacks that fit the prompt, serve its needs and that policy permits,
        and their permitted deployments (for :attr:`Plan.deployments`)."""
        chain, seen = [], {first.info.name}
        for name in first.fallbacks:
            mc = self.models[name]
            if (
                name not in seen
                and mc.info.priced
                and (mc.info.context_window or 1 << 62) >= prompt_tokens
                and not (needs and mc.lacks and _missing(mc, needs))
            ):
                chain.append(mc)
                seen.add(name)
        if not chain:
            return [], {}
        ok = self._permitted(principal, chain)
        return [m for m in chain if m.info.name in ok], ok

    def plan_chat(self, principal: Principal, req: ChatRequest, *, endpoint: str = "chat",
                  explore: bool = True) -> Plan:
        name = req.model
        prompt_tokens = req.prompt_tokens
        profile = None
        if name in ("auto", "default") and principal.routing_profile:
            profile = (
                principal.routing_profile
            )  # the caller's policy picks what "auto" means for them
        elif self.router.is_profile(name):
            profile = name
        if profile is not None:
            return self._plan_auto(principal, req, profile, prompt_tokens, explore)

        mc = self.models.get(name)
        if mc is None or mc.mode != "chat":
            raise GatewayError(
                404,
                f"The model '{name}' does not exist or you do not have access to it. "
                "GET /v1/models lists the models this gateway serves.",
                code="model_not_found",
                param="model",
            )
        self._check_servable(mc.info, prompt_tokens)
        if req.needs and mc.lacks:
            missing = _missing(mc, req.needs)
            if missing:  # refused early, as an over-long prompt is: no round trip, no fallback
                what, param = _NEED_TEXT[missing[0]]
                raise GatewayError(
                    400,
                    f"The model '{name}' does not support {what}, which this request uses "
                    f"('{param}'). Use a model that does, or 'auto' to let thrifty pick one.",
                    code="model_capability_missing",
                    param=param,
                )
        permitted = self._permitted(principal, [mc], strict=True)  # hardening: by deployment
        if not permitted:
            raise PolicyDenied(f"Policy does not allow model '{name}'.")
        rest, ok = self._fallbacks(principal, mc, prompt_tokens, req.needs)
        permitted.update(ok)
        plan = self._finish_plan(name, [mc, *rest], "explicit model", req, prompt_tokens)
        plan.named = True
        plan.deployments = permitted  # hardening
        return plan

    def _check_servable(self, info: ModelInfo, prompt_tokens: int) -> None:
        if not info.priced:
            raise GatewayError(
                400,
                f"The model '{info.name}' has no known price, so thrifty will not route "
                "to it. Set input_cost_per_token and output_cost_per_token for it in the "
                "config.",
                code="model_not_priced",
                param="model",
            )
        if info.context_window and prompt_tokens > info.context_window:
            raise GatewayError(
                400,
                f"This model's maximum context length is {info.context_window} tokens. "
                f"However, your messages resulted in about {prompt_tokens} tokens. Please "
                "reduce the length of the messages.",
                code="context_length_exceeded",
                param="messages",
            )

    def _plan_auto(
        self, principal: Principal, req: ChatRequest, profile: str, prompt_tokens: int,
        explore: bool = True,
    ) -> Plan:
        # Every priced, routable chat model is a candidate, whether the packaged router knows it
        # or not (thrifty.pipeline.routing: what it does not know, it learns).
        pool = [m for m in self.models.values() if m.route and m.mode == "chat" and m.info.priced]
        if not pool:
            unpriced = [n for n, m in self.models.items() if m.route and m.mode == "chat" and not m.info.priced]
            raise GatewayError(
                400,
                "No model is available for routing: "
                + (f"{', '.join(sorted(unpriced)[:5])} ha{'s' if len(unpriced) == 1 else 've'} no known "
                   "price (set input_cost_per_token and output_cost_per_token in the config)."
                   if unpriced else "the config has no chat model with route = true.")
                + " Name a model instead of a profile, or configure one.",
                code="no_routable_model",
                param="model",
            )
        fitting = [m for m in pool if (m.info.context_window or 1 << 62) >= prompt_tokens]
        if not fitting:
            biggest = max(m.info.context_window or 0 for m in pool)
            raise GatewayError(
                400,
                f"The largest context window among routable models is {biggest} tokens. "
                f"However, your messages resulted in about {prompt_tokens} tokens.",
                code="context_length_exceeded",
                param="messages",
            )
        needs = req.needs
        if needs:  # filtered before the router decides: the choice is among capable models
            capable = [m for m in fitting if not (m.lacks and _missing(m, needs))]
            if not capable:
                what = " and ".join(_NEED_TEXT[n][0] for n in needs if any(n in m.lacks for m in fitting))
                param = next(_NEED_TEXT[n][1] for n in needs if any(n in m.lacks for m in fitting))
                raise GatewayError(
                    400,
                    f"No model available for routing supports {what}, which this request "
                    f"uses ('{param}'). Name a model that does, or configure one.",
                    code="model_capability_missing",
                    param=param,
                )
            fitting = capable
        # hardening: by deployment (PolicyDenied with its reasons when policy leaves none)
        ok = self._permitted(principal, fitting, strict=True)
        if not ok:
            raise PolicyDenied(
                f"Policy does not allow any of the {len(fitting)} model(s) available for routing"
                + (" that can serve this request." if needs else ".")
            )
        allowed = [m for m in fitting if m.info.name in ok]
        exp_out = req.max_tokens or self.config.expected_output_tokens
        costs = {
            m.info.name: prompt_tokens * m.info.input_cost_per_token  # type: ignore[operator]
            + exp_out * m.info.output_cost_per_token
            for m in allowed
        }  # type: ignore[operator]
        routed = self.router.choose(req.prompt, allowed, costs, profile, principal.team_id, explore=explore)
        self.metrics.router_decisions.inc((routed.kind,))
        if routed.extra_cost:
            self.metrics.router_exploration_cost.inc((), routed.extra_cost)
        first = self.models[routed.model]
        scores = routed.scores
        rest, rest_ok = self._fallbacks(principal, first, prompt_tokens, needs)
        if not rest and scores:
            # No configured fallbacks: the next best models by estimated quality.
            by_score = sorted(
                (m for m in allowed if m is not first), key=lambda m: -scores.get(m.info.name, 0)
            )
            rest = by_score[:2]
        plan = self._finish_plan(
            profile, [first] + rest, f"{profile}: {routed.reason}", req, prompt_tokens
        )
        plan.scores = scores
        plan.route = routed.trace
        ok.update(rest_ok)  # hardening: what policy permits of each model in the chain
        plan.deployments = {m.info.name: ok[m.info.name] for m in plan.chain if m.info.name in ok}
        return plan

    def _finish_plan(
        self, requested: str, chain: list[ModelConfig], reason: str, req: Any, prompt_tokens: int
    ) -> Plan:
        # The budget hold must be a true maximum over the whole fallback chain.
        # hardening: the prompt bound is per model (its image rule, its context window).
        tokens_max = getattr(req, "prompt_tokens_max", None)
        max_cost, max_out = 0.0, 0
        bounds = {}
        choices = getattr(req, "n", 1)  # each of n choices may use the whole output bound
        for mc in chain:
            bound = max(tokens_max(mc.info), prompt_tokens) if tokens_max else prompt_tokens
            out = _max_output(mc.info, req.max_tokens, prompt_tokens) * choices
            cost = max_cost_nanos(mc.info, bound, out) / NANOS_PER_USD
            bounds[mc.info.name] = cost
            if cost >= max_cost:
                max_cost, max_out = cost, out
        return Plan(requested, chain, reason, prompt_tokens, max_out, max_cost, bounds=bounds)

    def plan_embeddings(
        self, principal: Principal, model: str, prompt_tokens: int, prompt_tokens_max: int = 0
    ) -> Plan:
        """The plan of an embeddings call; its hold prices ``prompt_tokens_max`` (a true maximum)
        when given."""
        mc = self.models.get(model)
        if mc is None or mc.mode != "embedding":
            raise GatewayError(
                404,
                f"The embedding model '{model}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        self._check_servable(mc.info, prompt_tokens)
        permitted = self._permitted(principal, [mc], strict=True)  # hardening: by deployment
        if not permitted:
            raise PolicyDenied(f"Policy does not allow model '{model}'.")
        cost = max_cost_nanos(mc.info, max(prompt_tokens, prompt_tokens_max), 0) / NANOS_PER_USD
        return Plan(
            model,
            [mc],
            "explicit model",
            prompt_tokens,
            0,
            cost,
            deployments=permitted,
            bounds={mc.info.name: cost},
        )

    # -- execution -------------------------------------------------------------------------

    async def _attempts(
        self,
        plan: Plan,
        served: Served,
        call: Callable[[Provider, dict[str, Any]], Awaitable[Any]],
        body: dict[str, Any],
        *,
        first_token: bool = False,
    ) -> Any:
        """Run ``call`` over the chain: each model's deployments in load-balanced order, each
        deployment up to ``retry.attempts`` times with jittered backoff, or after the wait a
        429's or 503's ``Retry-After`` asks for (when it fits ``retry.max_retry_after`` and the
        time left of ``timeouts.total``; else on to the next deployment). Non-retryable upstream
        errors (a 400 from the provider) end the request at once. Every attempt after the first
        is a retry in ``served`` and the metrics; one that reached the upstream and got no
        answer is charged its upper bound (``served.unknown_cost_usd``). A successful call's
        duration is recorded per model: the whole answer, or with ``first_token`` (a stream's
        start) the time to its first chunk."""
        policy = self.config.retry
        timing = self.metrics.ttft if first_token else self.metrics.upstream_latency
        last: UpstreamError | None = None
        tries = 0
        affinity = self.affinity
        # (time.monotonic, not the loop's clock: asyncio.get_running_loop() is a getpid() syscall
        # on Python 3.11)
        deadline = time.monotonic() + self.config.timeouts.total
        for index, mc in enumerate(plan.chain):
            name = mc.info.name
            pinned = affinity is not None and name in affinity
            # hardening: only the deployments policy permits (load balancing, affinity, retries)
            permitted = mc.deployments if plan.deployments is None else plan.deployments.get(name, ())
            deployments = (
                [d for d in affinity.order(name, body) if d in permitted]
                if pinned
                else order_deployments(permitted)
            )
            for dep in deployments:
                breaker = self.breakers[dep.key]
                ticket = breaker.acquire()
                if ticket is None:
                    served.errors.append(f"{dep.key}: circuit open")
                    continue
                # hardening: a probe this request holds is resolved by an upstream outcome
                # (success, retryable failure) or released: a 400 from upstream, or a failure
                # inside the gateway or a cancelled request (no upstream outcome at all).
                probing = ticket == PROBE
                provider = self.providers[dep.provider]
                payload, dropped, renamed = {**body, "model": dep.model}, (), False
                if dep.reasoning_params:  # sampling kept only for the model the client named
                    payload, dropped, renamed = reasoning_body(
                        payload, not (plan.named and index == 0)
                    )
                wait: float | None = None  # what the upstream asked for (Retry-After)
                for attempt in range(max(1, policy.attempts)):
                    if tries:
                        served.retries += 1
                        self.metrics.retries.inc()
                        if attempt:
                            await asyncio.sleep(
                                wait if wait is not None else backoff_delay(attempt - 1, policy)
                            )
                    tries += 1
                    if pinned:
                        affinity.acquire(name, dep)
                    started = time.perf_counter()
                    try:
                        result = await call(provider, payload)
                    except UpstreamError as exc:
                        if exc.retryable:  # a 400 says nothing about the deployment's health
                            breaker.failure()
                            probing = False
                        self.metrics.upstream_errors.inc((dep.key, exc.type))
                        served.errors.append(f"{dep.key}: {exc.status}")
                        last = exc
                        if exc.cost_unknown:  # the upstream may have done (and billed) it
                            served.unknown_attempts += 1
                            served.unknown_cost_usd += plan.bound(name)
                        if not exc.retryable:
                            if probing:  # hardening: an answer, but not about health
                                breaker.release()
                            if exc.try_next_model:  # first-hour: replay miss -> its fallback
                                break
                            raise
                        wait = exc.retry_after
                        if wait is not None and wait > min(
                            policy.max_retry_after, deadline - time.monotonic()
                        ):
                            break  # not worth waiting for here: the next deployment or model
                        if attempt + 1 < policy.attempts:  # hardening: a probe only to retry
                            ticket = breaker.acquire()
                            if ticket is None:
                                break
                            probing = ticket == PROBE
                        continue
                    except BaseException:  # hardening: no upstream outcome (see above)
                        if probing:
                            breaker.release()
                        raise
                    finally:  # streams: released once the first chunk is in
                        if pinned:
                            affinity.release(name, dep)
                    breaker.success()
                    timing.observe((name,), time.perf_counter() - started)
                    served.model, served.deployment, served.fallbacks = mc, dep, index
                    served.dropped, served.renamed = dropped, renamed
                    if index:
                        self.metrics.fallbacks.inc()
                    return result
        if last is None:
            raise UpstreamError(
                503,
                "Every deployment of the requested model is unavailable (circuit open); "
                "try again shortly.",
                retryable=True,
                type="unavailable",
            )
        raise last

    async def chat(self, plan: Plan, req: ChatRequest, served: Served) -> dict[str, Any]:
        body = req.body
        if req.stream:
            body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        return await self._attempts(
            plan, served, lambda p, b: p.chat(b, self.config.timeouts), body
        )

    async def chat_stream(
        self, plan: Plan, req: ChatRequest, served: Served
    ) -> tuple[list[dict[str, Any]], AsyncIterator[list[dict[str, Any]]]]:
        """The first batch of chunks and the rest of the stream; retries and fallbacks happen only
        until the first batch arrives (after that the client has seen bytes from this model)."""

        async def start(
            provider: Provider, body: dict[str, Any]
        ) -> tuple[list[dict[str, Any]], AsyncIterator[Any]]:
            it = provider.chat_stream(body, self.config.timeouts).__aiter__()
            try:
                first = await it.__anext__()
            except StopAsyncIteration:
                raise UpstreamError(502, "upstream stream was empty", retryable=True) from None
            return first, it

        return await self._attempts(plan, served, start, req.body, first_token=True)

    async def embeddings(self, plan: Plan, body: dict[str, Any], served: Served) -> dict[str, Any]:
        return await self._attempts(
            plan, served, lambda p, b: p.embeddings(b, self.config.timeouts), body
        )
