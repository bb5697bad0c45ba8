"""Run an ASGI app on a real loopback HTTP server in a background thread (tests, demo).

with running(app) as base_url:        # "http://127.0.0.1:<port>"
    openai.OpenAI(base_url=base_url + "/v1", api_key="x").chat.completions.create(...)
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, port: int = 0, *, log_level: str = "warning") -> Iterator[str]:
    import uvicorn

    from thrifty.gateway.server import UVICORN_OPTIONS

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


def served_app(config: Any, team: str, *, budget_usd: str = "1000") -> tuple[Any, Any, str]:
    """The app as ``thrifty serve`` builds it from ``config`` (spend control, /admin and
    /v1/feedback), with ``team``, a monthly team budget of ``budget_usd`` and a key of the
    team: (app, spend, the key's secret)."""
    from thrifty.gateway.app import create_app
    from thrifty.gateway.server import build_spend
    from thrifty.spend import store

    spend, mounts = build_spend(config)
    store.create_team(spend.db, team)
    _, key = store.create_key(spend.db, team_id=team)
    store.set_budget(spend.db, "team", team, amount_usd=budget_usd, period="monthly")
    spend.reload()
    return create_app(config, spend=spend, mounts=mounts), spend, key
