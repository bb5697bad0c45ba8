"""Batch deferral: /v1/files and /v1/batches on a real gateway over a fake upstream, driven by
the official openai SDK; restart survival and single billing against the real SQLite ledger."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import openai
import pytest
from batch_setup import (
    PRICE,
    RETRY,
    Ledger,
    batch_app,
    completed,
    front_config,
    gateway_process,
    jsonl,
    provider_app,
    run_lines,
    submit,
)

from thrifty.config import build_config
from thrifty.gateway.assemble import create_app
from thrifty.gateway.batch_exec import GatewayExecutor
from thrifty.multipliers.batches import line_request_id
from thrifty.multipliers.settings import BatchSettings
from thrifty.spend.contract import AuthError, OpenSpendControl, Principal
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running


def config(upstream: FakeUpstream, tmp: Path):
    return build_config(
        {
            "data_dir": str(tmp),
            "frontier_model": "m-ok",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {"m-ok": {"provider": "ok", "route": False, **PRICE}},
            "retry": RETRY,
        },
        env={},
    )


class TeamKeys(OpenSpendControl):
    """Two tenants by bearer token (the real DbSpendControl is used for billing below)."""

    async def authenticate(self, authorization: str | None) -> Principal:
        token = (authorization or "").removeprefix("Bearer ").strip()
        teams = {"sk-a": "team-a", "sk-b": "team-b"}
        if token not in teams:
            raise AuthError("Incorrect API key provided.")
        return Principal(key_id=token, team_id=teams[token])


def test_batch_through_sdk_with_tenant_isolation(upstream, tmp_path):
    spend = TeamKeys()
    cfg = config(upstream, tmp_path)
    cfg.batches = BatchSettings(poll=0.05)
    app = create_app(cfg, spend=spend)
    store = app.batch_store
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        b = openai.OpenAI(base_url=url + "/v1", api_key="sk-b", max_retries=0)
        f = a.files.create(file=("in.jsonl", jsonl(5)), purpose="batch")
        batch = a.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.request_counts.total == 5
        batch = completed(a, batch)
        assert batch.request_counts.completed == 5 and batch.request_counts.failed == 0
        lines = [json.loads(x) for x in a.files.content(batch.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in lines) == [f"req-{i}" for i in range(5)]
        assert all(
            x["response"]["status_code"] == 200 and x["response"]["body"]["choices"] for x in lines
        )
        assert [x.id for x in a.batches.list().data] == [batch.id]

        # Another tenant sees none of it.
        with pytest.raises(openai.NotFoundError):
            b.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            b.files.content(batch.output_file_id)
        with pytest.raises(openai.NotFoundError):
            b.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert b.batches.list().data == [] and b.files.list().data == []

        # Bad input: clear errors in OpenAI's format, never a 500.
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            a.batches.create(
                input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
            )
        bad = a.files.create(
            file=("bad.jsonl", b'{"custom_id": "x", "body": {}}\nnot json\n'), purpose="batch"
        )
        with pytest.raises(openai.BadRequestError, match="Line 2"):
            a.batches.create(
                input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError, match="purpose"):
            a.files.create(file=("x.jsonl", jsonl(1)), purpose="fine-tune")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).batches.list()
        with pytest.raises(openai.ConflictError):
            a.batches.cancel(batch.id)
    assert app.batch_store is store  # the app owns it and closed it at shutdown


def test_batch_survives_restart_and_is_billed_once(upstream, tmp_path):
    n = 6
    calls: dict[str, int] = {}

    async def process(crash_after: int | None) -> None:
        """One gateway process: runs the batch until ``crash_after`` lines were executed, then
        dies (cancelled) before the last one is marked done."""
        async with gateway_process(
            tmp_path, config(upstream, tmp_path), owner="anon", principal={}, content=jsonl(n)
        ) as (app, _, batches):
            real = GatewayExecutor(app.pipeline)
            crashed = asyncio.Event()

            async def executor(fields, endpoint, body, request_id):
                calls[request_id] = calls.get(request_id, 0) + 1
                result = await real(fields, endpoint, body, request_id)  # billed in the ledger
                if crash_after is not None and sum(calls.values()) >= crash_after:
                    crashed.set()
                    await asyncio.sleep(3600)  # killed before the line is marked done
                return result

            await run_lines(batches, executor, crashed if crash_after is not None else None)

    asyncio.run(process(crash_after=3))
    asyncio.run(process(crash_after=None))

    store_db = sqlite3.connect(tmp_path / "spend.db")  # the batches are beside the ledger
    ((batch_id, status),) = store_db.execute("SELECT id, status FROM batches").fetchall()
    assert status == "completed"
    # Lines finished before the crash ran once; the one in flight ran again with the same id.
    assert calls[line_request_id(batch_id, 0)] == calls[line_request_id(batch_id, 1)] == 1
    assert calls[line_request_id(batch_id, 2)] == 2
    assert sum(calls.values()) == n + 1
    ledger = sqlite3.connect(tmp_path / "spend.db")
    rows = ledger.execute("SELECT request_id, cost_nanos, batch FROM ledger").fetchall()
    assert sorted(r[0] for r in rows) == sorted(
        line_request_id(batch_id, i) for i in range(n)
    )  # billed once
    assert all(r[1] > 0 and r[2] == 1 for r in rows)


def test_lines_go_to_the_providers_batch_api_at_batch_prices(upstream, tmp_path):
    """The 'provider' is a second thrifty gateway (its /v1/files + /v1/batches are OpenAI's API)."""
    provider_spend = Ledger()
    provider = provider_app(tmp_path, upstream, provider_spend)
    with running(provider) as provider_url:
        spend = Ledger()
        front = batch_app(front_config(tmp_path, provider_url, upstream), spend)
        with running(front) as url:
            content = jsonl(3, "m-batch") + jsonl(2, "m-ok").replace(b"req-", b"sync-")
            client, batch = submit(url, "x", content)
            batch = completed(client, batch)
            lines = [
                json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()
            ]
            assert sorted(x["custom_id"] for x in lines) == [
                "req-0",
                "req-1",
                "req-2",
                "sync-0",
                "sync-1",
            ]
            assert all(x["response"]["status_code"] == 200 for x in lines)
    by_model = {r.request_id: r for r in spend.records}
    assert len(by_model) == 5 and all(r.batch for r in spend.records)
    up = [r for r in spend.records if r.served_model == "m-batch"]
    sync = [r for r in spend.records if r.served_model == "m-ok"]
    assert len(up) == 3 and len(sync) == 2
    for r in up:  # billed at the batch prices: half
        assert r.cost_usd == pytest.approx(r.prompt_tokens * 0.5e-6 + r.completion_tokens * 1e-6)
        assert "provider batch API" in r.route_reason
    for r in sync:  # ran synchronously: normal prices
        assert r.cost_usd == pytest.approx(r.prompt_tokens * 1e-6 + r.completion_tokens * 2e-6)
    # The provider saw one batch of the three lines.
    assert len([r for r in provider_spend.records if r.batch]) == 3


def test_deferrable_call_header(upstream, tmp_path):
    import httpx

    spend = Ledger()
    app = batch_app(config(upstream, tmp_path), spend)
    with running(app) as url:
        body = {"model": "m-ok", "messages": [{"role": "user", "content": "later is fine"}]}
        r = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"x-thrifty-defer": "batch"}
        )
        assert r.status_code == 202 and r.json()["object"] == "batch"
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        batch = completed(client, client.batches.retrieve(r.json()["id"]), timeout=10)
        out = json.loads(client.files.content(batch.output_file_id).text)
        assert out["response"]["status_code"] == 200 and out["response"]["body"]["choices"]
        bad = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"x-thrifty-defer": "someday"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-thrifty-defer"
        # Without the header the call is answered at once, as always.
        assert httpx.post(url + "/v1/chat/completions", json=body).json()["choices"]
    # The deferred line, the refused bad header (at no cost), the call answered at once.
    assert [(r.batch, r.status) for r in spend.records] == [(True, 200), (False, 400), (False, 200)]


def test_provider_batch_api_down_then_up_holds_once_and_completes(upstream, tmp_path):
    from thrifty.testing.server import free_port

    class Counting(Ledger):
        admits = 0

        async def admit(self, principal, model, *, prompt_tokens, max_cost_usd, ttl=None, request_id=None):
            Counting.admits += 1
            return await super().admit(
                principal, model, prompt_tokens=prompt_tokens, max_cost_usd=max_cost_usd, ttl=ttl,
                request_id=request_id,
            )

    port = free_port()
    spend = Counting()
    front = batch_app(front_config(tmp_path, f"http://127.0.0.1:{port}"), spend)
    provider = provider_app(tmp_path, upstream, Ledger())
    with running(front) as url:
        client, batch = submit(url, "x", jsonl(3, "m-batch"))
        time.sleep(0.5)  # several passes fail to reach the provider's batch API
        assert client.batches.retrieve(batch.id).status == "in_progress"
        with running(provider, port=port):
            batch = completed(client, batch)
        assert batch.request_counts.completed == 3
    assert Counting.admits == 3  # one hold per line, however many submissions failed
    assert sorted(r.request_id for r in spend.records) == [f"{batch.id}_{i}" for i in range(3)]
