"""Build the app from a config (with spend control and its admin API) and serve it with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from thrifty.bodylimit import limit_body
from thrifty.errors import UsageError
from thrifty.gateway.config import GatewayConfig, load_config
from thrifty.spend.api import OpenSpendControl, SpendControl

log = logging.getLogger("thrifty.gateway")


def build_spend(config: GatewayConfig) -> tuple[SpendControl, dict[str, Any]]:
    """Spend control from ``config.spend`` and its admin app at ``/admin``.

    Falls back to :class:`OpenSpendControl` (no keys, no budgets) only when the spend
    package does not provide ``from_config`` yet, and says so.
    """
    import thrifty.spend as spend_pkg

    if not config.spend_enabled:
        log.warning("spend_enabled = false: running without keys, budgets or ledger")
        return OpenSpendControl(), {}
    from_config = getattr(spend_pkg, "from_config", None)
    if from_config is None:
        log.warning("thrifty.spend has no from_config: running without keys, budgets or ledger")
        return OpenSpendControl(), {}
    config.data_dir.mkdir(parents=True, exist_ok=True)
    spend = from_config(config.spend, Path(config.data_dir))
    admin = getattr(spend_pkg, "admin_app", None)
    limit = config.max_body_bytes
    mounts = {"/admin": admin(spend, max_body_bytes=limit)} if admin is not None else {}
    from thrifty.reports.web import mounts as report_mounts  # /ui dashboard, POST /v1/feedback

    mounts.update(report_mounts(spend, config))
    # Every mounted API refuses bodies over max_body_bytes, as the model endpoints do.
    if "/v1/feedback" in mounts:
        from thrifty.reports.feedback import feedback_app

        mounts["/v1/feedback"] = feedback_app(spend, max_body_bytes=limit)
    if "/ui" in mounts:
        mounts["/ui"] = limit_body(mounts["/ui"], limit, _plain_too_large)
    return spend, mounts


def _plain_too_large(limit: int) -> tuple[bytes, bytes]:
    """The dashboard is HTML, not an API: a plain-text 413."""
    from thrifty.bodylimit import too_large_message

    return too_large_message(limit).encode(), b"text/plain; charset=utf-8"


def make_app(config_path: str | None = None) -> Any:
    from thrifty.gateway.app import create_app
    from thrifty.multipliers.wiring import with_multipliers  # caches, cascade, batches, affinity

    config = load_config(config_path)
    spend, mounts = build_spend(config)
    return with_multipliers(create_app(config, spend=spend, mounts=mounts), config_path)


SERVERS = ("uvicorn", "granian")
# How thrifty runs under uvicorn, here and in tests (thrifty.testing.server.running).
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "proxy_headers": False,
}


def serve(
    app: Any, host: str, port: int, *, log_level: str = "warning", server: str = "uvicorn"
) -> None:
    """Serve ``app`` in this process (one event loop, one core).

    ``uvicorn`` (httptools + uvloop) is the default: in ``benchmarks/gateway.py`` (A/B, alternating,
    spend on) it used ~0.29 ms CPU per request at one connection against granian's ~0.40 ms, and
    about the same at 64 connections (0.19 vs 0.15-0.20 ms). ``granian`` (Rust HTTP, in-process
    "embedded" mode, which granian marks experimental) can be chosen when installed.
    """
    if server == "granian":
        try:
            import granian  # noqa: F401
        except ImportError:
            raise UsageError(
                "--server granian needs granian: pip install 'granian>=2.5,<3'"
            ) from None
        _serve_granian(app, host, port, log_level)
        return
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        date_header=False,
        **UVICORN_OPTIONS,
    )


def _serve_granian(app: Any, host: str, port: int, log_level: str) -> None:
    import asyncio
    import signal

    import uvloop
    from granian.constants import Interfaces
    from granian.server.embed import Server

    async def main() -> None:
        server = Server(
            app,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            websockets=False,
            log_enabled=log_level in ("debug", "info"),
            backlog=2048,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(
                sig, server.stop
            )  # graceful: lifespan shutdown flushes the ledger
        await server.serve()

    uvloop.run(main())
