"""Real gateway processes (``thrifty serve``) and a concurrent client, for spend tests and benchmarks.

Loopback only: the gateways listen on 127.0.0.1 and their upstreams are the
local fake (:mod:`thrifty.testing.fake_upstream`).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Self

import httpx

from thrifty.testing.server import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout, for ``python -m thrifty.cli``
ADMIN_KEY = "sk-thr-admin-e2e-test-key"
PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "context_window": 4000,
         "max_output_tokens": 1000}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: pathlib.Path, *, data_dir: pathlib.Path, upstreams: dict[str, str],
                 models: dict[str, dict], spend: dict, sections: dict[str, dict] | None = None) -> pathlib.Path:
    """``sections``: more tables, e.g. ``{"cache": {"backend": "sqlite"}}``."""
    lines = [f"data_dir = {json.dumps(str(data_dir))}", ""]
    for table, fields in (sections or {}).items():
        lines += [f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in fields.items()] + [""]
    lines += ["[retry]", "attempts = 1", "backoff_base = 0.01", "backoff_max = 0.02", ""]
    lines += ["[circuit_breaker]", "failures = 100000", "cooldown = 30", ""]
    lines += ["[spend]"] + [f"{k} = {_toml_value(v)}" for k, v in spend.items()] + [""]
    for name, url in upstreams.items():
        lines += [f"[providers.{json.dumps(name)}]", 'type = "openai"', f"base_url = {json.dumps(url)}", ""]
    for name, fields in models.items():
        lines += [f"[models.{json.dumps(name)}]"] + [f"{k} = {_toml_value(v)}" for k, v in fields.items()] + [""]
    path.write_text("\n".join(lines))
    return path


class Gateway:
    """``thrifty serve`` in its own process (``workers``: ``--workers N``, each worker
    ready); ``kill()`` is a real SIGKILL of the serving process."""

    def __init__(self, config: pathlib.Path, log: pathlib.Path, *, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "THRIFTY_ADMIN_KEY": ADMIN_KEY, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path,
               **(env or {})}
        self._log = open(log, "ab")  # noqa: SIM115 (the gateway process writes to it; closed in stop()/kill())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thrifty.cli", "serve", "--config", str(config), "--port", str(self.port),
             "--workers", str(workers)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Reply:
    """What a client saw: enough to check the budget error and the reported cost."""

    status_code: int
    headers: dict[str, str]
    body: Any
    port: int

    def json(self) -> Any:
        return self.body


async def fire(urls: list[str], secret: str, n: int, body: dict[str, Any], concurrency: int | None = None) -> list[Reply]:
    """``n`` chat requests spread over ``urls``, at most ``concurrency`` (default: all) at once.

    aiohttp rather than httpx: httpx's connection pool slows down badly with
    hundreds of concurrent connections and would measure itself.
    """
    import asyncio

    import aiohttp

    limit = concurrency or n
    gate = asyncio.Semaphore(limit)
    headers = {"authorization": f"Bearer {secret}"}
    connector = aiohttp.TCPConnector(limit=limit)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(i: int) -> Reply:
            url = urls[i % len(urls)]
            async with gate, session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                data = await r.json(content_type=None)
                return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, data,
                             int(url.rsplit(":", 1)[1]))

        return await asyncio.gather(*(one(i) for i in range(n)))
