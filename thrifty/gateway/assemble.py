"""Assemble the gateway from its config tree: the one way ``thrifty serve``, ``thrifty demo``,
the tests and the benchmarks build it.

config -> providers, router, spend control -> the planner/executor (:class:`Gateway`),
billing, the pipeline stages the config asks for (caches, cascade, batch deferral, prefix
affinity) -> :class:`~thrifty.pipeline.pipeline.Pipeline` -> :class:`GatewayApp` with its
mounts (``/admin``, ``/ui``, ``/v1/feedback``, ``/v1/files``, ``/v1/batches``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thrifty.catalog.loader import Catalog
from thrifty.config import GatewayConfig, load_config
from thrifty.errors import UsageError
from thrifty.gateway.app import ASGIApp, GatewayApp
from thrifty.pipeline.billing import Billing
from thrifty.pipeline.metrics import Metrics
from thrifty.pipeline.pipeline import Pipeline
from thrifty.pipeline.planner import Gateway
from thrifty.pipeline.routing import AutoRouter
from thrifty.providers import build_providers
from thrifty.spend import database_url as spend_database_url
from thrifty.spend.contract import OpenSpendControl, SpendControl

log = logging.getLogger("thrifty.gateway")


def create_app(
    config: GatewayConfig,
    *,
    spend: SpendControl,
    mounts: Mapping[str, ASGIApp] | None = None,
    router: Any | None = None,
    providers: Mapping[str, Any] | None = None,
    metrics_dir: Path | None = None,
) -> GatewayApp:
    """The gateway ASGI app for ``config``, with every stage its config asks for.

    ``spend`` is called on every request (authenticate, allowed, admit, settle); ``mounts`` maps
    path prefixes (e.g. ``"/admin"``) to ASGI apps; ``router`` overrides the learned router (an
    object with the ``thrifty.router.Router`` interface); ``providers`` overrides adapters by name;
    ``metrics_dir`` is where the workers of ``thrifty serve --workers N`` share their counts.
    """
    provs = dict(build_providers(config.providers))
    provs.update(providers or {})
    auto = AutoRouter(config, router)
    frontier = (
        config.models[config.frontier_model].info
        if config.frontier_model in config.models
        else Catalog.load(config.data_dir).model(config.frontier_model, "openai")
    )
    metrics = Metrics()
    gateway = Gateway(config, spend, provs, auto, frontier, metrics)
    billing = Billing(spend, metrics, frontier)
    if config.affinity.models:
        gateway.affinity = _affinity(gateway)
    cascade_models = list(config.cascade.models) or default_cascade(gateway)
    unknown = [m for m in cascade_models if m not in gateway.models]
    if unknown:
        raise UsageError(f"cascade.models: {', '.join(unknown)} not configured models")
    cascade = cache = None
    if cascade_models:
        from thrifty.pipeline.cascade_stage import CascadeStage

        cascade = CascadeStage(cascade_models)
    if config.cache is not None:
        from thrifty.pipeline.cache_stage import CacheStage

        cache = CacheStage(config.cache, gateway, cascade_models)
    pipeline = Pipeline(gateway, billing, cache=cache, cascade=cascade)
    all_mounts = dict(mounts or {})
    on_startup, on_shutdown = [], []
    if config.batches.enabled:
        from thrifty.gateway.batch_api import batch_mounts
        from thrifty.gateway.batch_exec import GatewayExecutor
        from thrifty.multipliers.batches import BatchRunner, BatchStore
        from thrifty.pipeline.defer_stage import DeferStage

        # Batches live where the ledger lives (SQLite or PostgreSQL), leased per replica.
        store = BatchStore(
            getattr(spend, "db_url", None)
            or spend_database_url(config.spend, Path(config.data_dir))
        )
        runner = BatchRunner(
            store,
            GatewayExecutor(pipeline),
            concurrency=config.batches.concurrency,
            poll=config.batches.poll,
            lease=config.batches.lease,
        )
        pipeline.defer = DeferStage(store, runner)
        all_mounts.update(
            batch_mounts(store, runner, spend.authenticate, max_body_bytes=config.max_body_bytes)
        )

        async def start_batches() -> None:
            await runner.restore()  # before the first request: provider lines take their holds
            runner.start()  # resumes unfinished batches

        async def stop_batches() -> None:
            await runner.close()
            await store.close()

        on_startup.append(start_batches)
        on_shutdown.append(stop_batches)
    db_url = getattr(spend, "db_url", None)
    if db_url and config.routing.learning:
        _learn_from(db_url, auto, metrics, on_startup, on_shutdown)
    if config.judge is not None:
        _judge(config, pipeline, spend, metrics, on_shutdown)
    if cache is not None:

        async def start_cache() -> None:
            cache.start()

        on_startup.append(start_cache)
        on_shutdown.append(cache.close)
    shared = None
    if metrics_dir is not None:
        from thrifty.gateway.metrics_share import SharedMetrics

        shared = SharedMetrics(metrics, metrics_dir)

        async def start_metrics() -> None:
            shared.start()

        on_startup.append(start_metrics)
        on_shutdown.append(shared.close)
    return GatewayApp(
        pipeline, all_mounts, on_startup=on_startup, on_shutdown=on_shutdown, shared_metrics=shared
    )


def _learn_from(db_url: str, auto: AutoRouter, metrics: Metrics, on_startup: list, on_shutdown: list) -> None:
    """Labels in the spend database teach this replica's router: all at start, then every
    ``[router] sync_s`` seconds (what other replicas stored) and at once after a local write."""
    import asyncio

    from thrifty.router.labels import LabelSync

    sync = LabelSync(db_url, lambda team, label: auto.learn(auto.scope(team), label),
                     lambda source: metrics.router_labels.inc((source,)))
    tasks: list[asyncio.Task] = []

    async def loop(period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.to_thread(sync.poll)
            except Exception:  # the loop must outlive a database hiccup
                log.exception("loading router labels failed")

    async def start() -> None:
        await asyncio.to_thread(sync.poll)
        sync.register()
        if auto.settings.sync_s > 0:
            tasks.append(asyncio.create_task(loop(auto.settings.sync_s)))

    async def stop() -> None:
        for t in tasks:
            t.cancel()
        await asyncio.to_thread(sync.close)

    on_startup.append(start)
    on_shutdown.append(stop)


def _judge(config: GatewayConfig, pipeline: Pipeline, spend: SpendControl, metrics: Metrics,
           on_shutdown: list) -> None:
    """``[judge]``: grades of routed answers become labels in the spend database, so there is
    no judge without one (``spend_enabled = false``)."""
    from thrifty.pipeline.judge_stage import JudgeStage

    settings = config.judge
    assert settings is not None
    db_url = getattr(spend, "db_url", None)
    if not db_url:
        log.warning("[judge] is off: its grades are stored in the spend database, and this "
                    "gateway has none (spend_enabled = false)")
        return
    pipeline.judge = JudgeStage(settings, db_url, pipeline.own_call, metrics,
                                flush=getattr(spend, "flush", None))
    on_shutdown.append(pipeline.judge.close)
    log.info("judge: %s grades %g of routed answers (a grade weighs %g of a user rating)",
             settings.model, settings.sample, settings.weight)


def _affinity(gw: Gateway) -> Any:
    """The gateway's prefix-affinity balancer (read by ``Gateway._attempts``)."""
    from thrifty.multipliers.affinity import DeploymentAffinity

    settings = gw.config.affinity
    bad = [m for m in settings.models if m not in gw.models or len(gw.models[m].deployments) < 2]
    if bad:
        raise UsageError(
            f"affinity.models: {', '.join(bad)} must be configured models with two or more deployments"
        )
    return DeploymentAffinity(
        {m: gw.models[m].deployments for m in settings.models},
        load_factor=settings.load_factor,
        key_chars=settings.key_chars,
    )


def default_cascade(gw: Gateway) -> list[str]:
    """Without ``[cascade] models``: the frontier model last; first, the cheapest routable chat
    model whose accuracy in the router's training data is at least 80% of the frontier's (on
    the packaged router: mixtral-8x7b-chat, the cascade measured in docs/multipliers.md), else
    the cheapest routable chat model."""
    chat = {
        name: mc.info.input_cost_per_token + mc.info.output_cost_per_token
        for name, mc in gw.models.items()
        if mc.mode == "chat" and mc.route and mc.info.priced
    }
    if not chat:
        return []
    strong = (
        gw.config.frontier_model
        if gw.config.frontier_model in gw.models
        else max(chat, key=chat.__getitem__)
    )
    meta = getattr(getattr(gw.router, "router", None), "meta", None) or {}
    accuracy = meta.get("accuracy_per_model") or {}
    floor = 0.8 * accuracy.get(strong, 2.0)  # no accuracy for the frontier: no model qualifies
    good = [n for n in chat if n != strong and accuracy.get(n, 0.0) >= floor]
    cheap = min(good or [n for n in chat if n != strong] or [strong], key=chat.__getitem__)
    return [cheap, strong] if cheap != strong else []


def build_spend(config: GatewayConfig, *, workers: int = 1) -> tuple[SpendControl, dict[str, Any]]:
    """Spend control from ``config.spend`` and the apps mounted beside the gateway: the admin
    API at ``/admin``, the dashboard at ``/ui`` and ``POST /v1/feedback``. With ``workers`` > 1
    this process is one of ``thrifty serve --workers N``: its budget holds and rate limits are
    kept in the database, where every worker sees them."""
    import thrifty.spend as spend_pkg
    from thrifty.bodylimit import limit_body, too_large_message
    from thrifty.reports.feedback import feedback_app
    from thrifty.reports.web import mounts as report_mounts

    if not config.spend_enabled:
        log.warning("spend_enabled = false: running without keys, budgets or ledger")
        return OpenSpendControl(), {}
    config.data_dir.mkdir(parents=True, exist_ok=True)
    spend = spend_pkg.from_config(config.spend, Path(config.data_dir), shared=workers > 1)
    limit = config.max_body_bytes
    mounts: dict[str, Any] = {"/admin": spend_pkg.admin_app(spend, max_body_bytes=limit)}
    mounts.update(report_mounts(spend, config))
    # Every mounted API refuses bodies over max_body_bytes, as the model endpoints do.
    if "/v1/feedback" in mounts:
        mounts["/v1/feedback"] = feedback_app(spend, max_body_bytes=limit)
    if "/ui" in mounts:
        # The dashboard is HTML, not an API: a plain-text 413.
        mounts["/ui"] = limit_body(
            mounts["/ui"],
            limit,
            lambda n: (too_large_message(n).encode(), b"text/plain; charset=utf-8"),
        )
    return spend, mounts


def build_app(
    config: GatewayConfig, *, workers: int = 1, metrics_dir: Path | None = None
) -> tuple[GatewayApp, SpendControl]:
    """The app exactly as ``thrifty serve`` runs it for ``config``, and its spend control
    (``workers``, ``metrics_dir``: as one of the processes of ``thrifty serve --workers N``)."""
    spend, mounts = build_spend(config, workers=workers)
    app = create_app(config, spend=spend, mounts=mounts, metrics_dir=metrics_dir)
    return app, spend


def make_app(config_path: str | None = None) -> GatewayApp:
    """``thrifty serve``'s app for a config file (or the embedded default)."""
    return build_app(load_config(config_path))[0]
