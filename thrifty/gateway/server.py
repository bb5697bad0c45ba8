"""Serve the assembled app (thrifty/gateway/assemble.py) with uvicorn (or granian)."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from thrifty.errors import UsageError

log = logging.getLogger("thrifty.gateway")


SERVERS = ("uvicorn", "granian")
# How thrifty runs under uvicorn, here and in the background runner below (demo, tests).
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "proxy_headers": False,
}


# The youngest generation's threshold while serving (CPython's default: 700 allocations).
YOUNG_GC_THRESHOLD = 10_000


def tune_gc_for_serving() -> None:
    """Make the cyclic garbage collector cheap under load; run once, just before serving.

    - What exists before serving (config, catalog, router: some 55k objects that live as long
      as the process) is frozen out of the collector: every full collection walked it again.
    - Collections of the youngest generation run every 10,000 allocations, not 700: with 64
      requests in flight, each collection walked the live objects of all of them and promoted
      them, to be walked again by the older generations' collections.

    Measured in-process (callgrind, 64 requests in flight, fixed model): the collector's
    instructions per request went from about 36k (frozen, default thresholds) to 2k; garbage in
    cycles lives at most 10,000 allocations longer.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


def serve(
    app: Any, host: str, port: int, *, log_level: str = "warning", server: str = "uvicorn"
) -> None:
    """Serve ``app`` in this process (one event loop, one core).

    ``uvicorn`` (httptools + uvloop) is the default: in ``benchmarks/gateway.py`` (A/B, alternating,
    spend on) it used ~0.29 ms CPU per request at one connection against granian's ~0.40 ms, and
    about the same at 64 connections (0.19 vs 0.15-0.20 ms). ``granian`` (Rust HTTP, in-process
    "embedded" mode, which granian marks experimental) can be chosen when installed.
    """
    tune_gc_for_serving()
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, port: int = 0, *, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a background thread for the block (the demo, tests)."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, **UVICORN_OPTIONS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="thrifty-test-server")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
