"""Shared setup of the batch tests (test_mult_batches, test_mult_batch_restart): prices, the
batch input file, a spend control that records what it bills, the 'provider' (another thrifty
whose /v1/files + /v1/batches are OpenAI's batch API) and the front gateway that sends it lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai

from thrifty.config import build_config
from thrifty.gateway.app import GatewayApp
from thrifty.gateway.assemble import create_app
from thrifty.multipliers.batches import BatchRunner, BatchStore
from thrifty.multipliers.settings import BatchSettings
from thrifty.spend.contract import LedgerRecord, OpenSpendControl
from thrifty.spend.control import DbSpendControl
from thrifty.testing.fake_upstream import FakeUpstream

PRICE = {
    "input_cost_per_token": 1e-6,
    "output_cost_per_token": 2e-6,
    "context_window": 2000,
    "max_output_tokens": 100,
}
RETRY = {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02}


class Ledger(OpenSpendControl):
    """Records every settled request."""

    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    async def settle(self, reservation, record) -> None:
        self.records.append(record)


def jsonl(n: int, model: str = "m-ok", *, question: str = "q{}", max_tokens: int = 5) -> bytes:
    """A batch input file of ``n`` chat requests, custom ids req-0 .. req-<n-1>."""
    return b"".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": question.format(i)}],
                    "max_tokens": max_tokens,
                },
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def provider_app(tmp: Path, upstream: FakeUpstream, spend: OpenSpendControl) -> GatewayApp:
    """The 'provider': a thrifty serving m-up from ``upstream``, with its batch API."""
    config = build_config(
        {
            "data_dir": str(tmp / "provider"),
            "frontier_model": "m-up",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {"m-up": {"provider": "ok", "route": False, **PRICE}},
        },
        env={},
    )
    return batch_app(config, spend)


def front_config(tmp: Path, provider_url: str, upstream: FakeUpstream | None = None, **extra: Any):
    """The front gateway: m-batch on provider bp, the batch API of the thrifty at
    ``provider_url``, at half prices for batches; with ``upstream``, also m-ok served by it.
    ``extra``: more top-level config (e.g. ``retry=RETRY``)."""
    providers: dict[str, Any] = {
        "bp": {"type": "openai", "base_url": provider_url + "/v1", "batch_api": True}
    }
    models: dict[str, Any] = {
        "m-batch": {
            "provider": "bp",
            "upstream_model": "m-up",
            "route": False,
            **PRICE,
            "input_cost_per_token_batches": 0.5e-6,
            "output_cost_per_token_batches": 1e-6,
        }
    }
    if upstream is not None:
        providers["ok"] = {"type": "openai", "base_url": upstream.base_url}
        models["m-ok"] = {"provider": "ok", "route": False, **PRICE}
    return build_config(
        {
            "data_dir": str(tmp / "front"),
            "frontier_model": "m-batch",
            "providers": providers,
            "models": models,
            **extra,
        },
        env={},
    )


def batch_app(config, spend: OpenSpendControl) -> GatewayApp:
    """A gateway with batches (its runner polling every 0.05 s) and no cache."""
    config.cache, config.batches = None, BatchSettings(poll=0.05)
    return create_app(config, spend=spend)


def submit(url: str, key: str, content: bytes) -> tuple[openai.OpenAI, Any]:
    """An SDK client of the gateway at ``url`` with ``key``, and the batch of ``content`` it
    submitted (uploaded as a file, then a chat completions batch of it)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return client, batch


def completed(client: openai.OpenAI, batch: Any, timeout: float = 20) -> Any:
    """``batch`` once it is completed (polled every 0.05 s; fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while batch.status != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return batch


# -- a gateway process on a temporary directory's spend database, journal and batch store -------


@contextlib.asynccontextmanager
async def gateway_process(
    tmp: Path, config, *, owner: str, principal: dict[str, Any], content: bytes
) -> AsyncIterator[tuple[Any, DbSpendControl, BatchStore]]:
    """One gateway process: (app, spend, batches) on ``tmp``'s spend.db (the batches in it too)
    and journal, started, with a batch of ``content`` created for ``owner`` unless one is
    unfinished already (from a process before); shut down when the block ends."""
    spend = DbSpendControl(f"sqlite:///{tmp / 'spend.db'}", tmp / "journal")
    batches = BatchStore(spend.db_url)
    config.batches = BatchSettings(enabled=False)  # the test runs the lines itself
    app = create_app(config, spend=spend)
    await app.startup()
    if not await batches.unfinished():
        f = await batches.create_file(owner, "batch", "in.jsonl", content)
        await batches.create_batch(owner, principal, f["id"], "/v1/chat/completions", "24h")
    yield app, spend, batches
    await app.shutdown()  # closes spend control: the ledger is flushed
    await batches.close()


async def run_lines(batches: BatchStore, executor: Any, crashed: asyncio.Event | None) -> None:
    """Run the batch lines one at a time with ``executor`` until ``crashed`` is set (the
    process dies: the runner is cancelled), or, with no ``crashed``, until every batch is done."""
    runner = BatchRunner(batches, executor, concurrency=1, poll=0.05)
    runner.start()
    if crashed is not None:
        await asyncio.wait_for(crashed.wait(), 20)
    else:
        deadline = time.monotonic() + 20
        while await batches.unfinished():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    await runner.close()
