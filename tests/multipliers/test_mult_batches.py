"""Batch deferral: /v1/files and /v1/batches on a real gateway over a fake upstream, driven by
the official openai SDK; restart survival and single billing against the real SQLite ledger."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from thrifty.gateway.app import create_app
from thrifty.gateway.config import build_config
from thrifty.gateway.testing import running
from thrifty.multipliers.batch_api import batch_mounts
from thrifty.multipliers.batch_exec import GatewayExecutor
from thrifty.multipliers.batches import BatchRunner, BatchStore, line_request_id
from thrifty.providers.fake_upstream import FakeUpstream
from thrifty.spend.api import AuthError, OpenSpendControl, Principal

PRICE = {
    "input_cost_per_token": 1e-6,
    "output_cost_per_token": 2e-6,
    "context_window": 2000,
    "max_output_tokens": 100,
}


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream("ok")
    fake.start()
    yield fake
    fake.stop()


def config(upstream: FakeUpstream, tmp: Path):
    return build_config(
        {
            "data_dir": str(tmp),
            "frontier_model": "m-ok",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {"m-ok": {"provider": "ok", "route": False, **PRICE}},
            "retry": {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02},
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


def jsonl(n: int, model: str = "m-ok") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"q{i}"}],
                    "max_tokens": 5,
                },
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def test_batch_through_sdk_with_tenant_isolation(upstream, tmp_path):
    spend = TeamKeys()
    store = BatchStore(tmp_path / "batches.sqlite3")
    holder: dict[str, Any] = {}
    runner = BatchRunner(store, GatewayExecutor(lambda: holder["app"].gw), poll=0.05)
    app = create_app(
        config(upstream, tmp_path),
        spend=spend,
        mounts=batch_mounts(store, runner, spend.authenticate),
    )
    holder["app"] = app
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        b = openai.OpenAI(base_url=url + "/v1", api_key="sk-b", max_retries=0)
        f = a.files.create(file=("in.jsonl", jsonl(5)), purpose="batch")
        batch = a.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.request_counts.total == 5
        deadline = time.monotonic() + 20
        while batch.status != "completed":
            assert time.monotonic() < deadline, batch
            time.sleep(0.05)
            batch = a.batches.retrieve(batch.id)
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
    asyncio.run(store.close())


def test_batch_survives_restart_and_is_billed_once(upstream, tmp_path):
    from thrifty.spend.control import DbSpendControl

    n = 6
    calls: dict[str, int] = {}

    async def process(crash_after: int | None) -> None:
        """One gateway process: runs the batch until ``crash_after`` lines were executed, then
        dies (cancelled) before the last one is marked done."""
        spend = DbSpendControl(f"sqlite:///{tmp_path / 'spend.db'}", tmp_path / "journal")
        store = BatchStore(tmp_path / "batches.sqlite3")
        app = create_app(config(upstream, tmp_path), spend=spend)
        await app.startup()
        real = GatewayExecutor(lambda: app.gw)
        crashed = asyncio.Event()

        async def executor(fields, endpoint, body, request_id):
            calls[request_id] = calls.get(request_id, 0) + 1
            result = await real(fields, endpoint, body, request_id)  # billed in the ledger
            if crash_after is not None and sum(calls.values()) >= crash_after:
                crashed.set()
                await asyncio.sleep(3600)  # killed before the line is marked done
            return result

        if not await store.unfinished():
            await store.create_batch(
                "anon",
                {},
                (await store.create_file("anon", "batch", "in.jsonl", jsonl(n)))["id"],
                "/v1/chat/completions",
                "24h",
            )
        runner = BatchRunner(store, executor, concurrency=1, poll=0.05)
        runner.start()
        if crash_after is not None:
            await asyncio.wait_for(crashed.wait(), 20)
        else:
            deadline = time.monotonic() + 20
            while await store.unfinished():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await runner.close()
        await app.shutdown()  # closes spend control: the ledger is flushed
        await store.close()

    asyncio.run(process(crash_after=3))
    asyncio.run(process(crash_after=None))

    store_db = sqlite3.connect(tmp_path / "batches.sqlite3")
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


class Ledger(OpenSpendControl):
    def __init__(self) -> None:
        self.records: list = []

    async def settle(self, reservation, record) -> None:
        self.records.append(record)


def test_lines_go_to_the_providers_batch_api_at_batch_prices(upstream, tmp_path):
    """The 'provider' is a second thrifty gateway (its /v1/files + /v1/batches are OpenAI's API)."""
    from thrifty.multipliers.settings import BatchSettings
    from thrifty.multipliers.wiring import MultiplierApp

    provider_cfg = build_config(
        {
            "data_dir": str(tmp_path / "provider"),
            "frontier_model": "m-up",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {"m-up": {"provider": "ok", "route": False, **PRICE}},
        },
        env={},
    )
    provider_spend = Ledger()
    provider = MultiplierApp(
        create_app(provider_cfg, spend=provider_spend), cache=None, batches=BatchSettings(poll=0.05)
    )
    with running(provider) as provider_url:
        front_cfg = build_config(
            {
                "data_dir": str(tmp_path / "front"),
                "frontier_model": "m-batch",
                "providers": {
                    "bp": {"type": "openai", "base_url": provider_url + "/v1", "batch_api": True},
                    "ok": {"type": "openai", "base_url": upstream.base_url},
                },
                "models": {
                    "m-batch": {
                        "provider": "bp",
                        "upstream_model": "m-up",
                        "route": False,
                        **PRICE,
                        "input_cost_per_token_batches": 0.5e-6,
                        "output_cost_per_token_batches": 1e-6,
                    },
                    "m-ok": {"provider": "ok", "route": False, **PRICE},
                },
            },
            env={},
        )
        spend = Ledger()
        front = MultiplierApp(
            create_app(front_cfg, spend=spend), cache=None, batches=BatchSettings(poll=0.05)
        )
        with running(front) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            content = jsonl(3, "m-batch") + jsonl(2, "m-ok").replace(b"req-", b"sync-")
            f = client.files.create(file=("in.jsonl", content), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 20
            while batch.status != "completed":
                assert time.monotonic() < deadline, batch
                time.sleep(0.05)
                batch = client.batches.retrieve(batch.id)
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

    from thrifty.multipliers.settings import BatchSettings
    from thrifty.multipliers.wiring import MultiplierApp

    spend = Ledger()
    app = MultiplierApp(
        create_app(config(upstream, tmp_path), spend=spend),
        cache=None,
        batches=BatchSettings(poll=0.05),
    )
    with running(app) as url:
        body = {"model": "m-ok", "messages": [{"role": "user", "content": "later is fine"}]}
        r = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"x-thrifty-defer": "batch"}
        )
        assert r.status_code == 202 and r.json()["object"] == "batch"
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        batch, deadline = client.batches.retrieve(r.json()["id"]), time.monotonic() + 10
        while batch.status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
            batch = client.batches.retrieve(batch.id)
        out = json.loads(client.files.content(batch.output_file_id).text)
        assert out["response"]["status_code"] == 200 and out["response"]["body"]["choices"]
        bad = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"x-thrifty-defer": "someday"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-thrifty-defer"
        # Without the header the call is answered at once, as always.
        assert httpx.post(url + "/v1/chat/completions", json=body).json()["choices"]
    assert [r.batch for r in spend.records] == [True, False]


def test_provider_batch_api_down_then_up_holds_once_and_completes(upstream, tmp_path):
    from thrifty.gateway.testing import free_port
    from thrifty.multipliers.settings import BatchSettings
    from thrifty.multipliers.wiring import MultiplierApp

    class Counting(Ledger):
        admits = 0

        async def admit(self, principal, model, *, prompt_tokens, max_cost_usd):
            Counting.admits += 1
            return await super().admit(
                principal, model, prompt_tokens=prompt_tokens, max_cost_usd=max_cost_usd
            )

    port = free_port()
    front_cfg = build_config(
        {
            "data_dir": str(tmp_path / "front"),
            "frontier_model": "m-batch",
            "providers": {
                "bp": {
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "batch_api": True,
                }
            },
            "models": {
                "m-batch": {
                    "provider": "bp",
                    "upstream_model": "m-up",
                    "route": False,
                    **PRICE,
                    "input_cost_per_token_batches": 0.5e-6,
                    "output_cost_per_token_batches": 1e-6,
                }
            },
        },
        env={},
    )
    spend = Counting()
    front = MultiplierApp(
        create_app(front_cfg, spend=spend), cache=None, batches=BatchSettings(poll=0.05)
    )
    provider_cfg = build_config(
        {
            "data_dir": str(tmp_path / "provider"),
            "frontier_model": "m-up",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {"m-up": {"provider": "ok", "route": False, **PRICE}},
        },
        env={},
    )
    provider = MultiplierApp(
        create_app(provider_cfg, spend=Ledger()), cache=None, batches=BatchSettings(poll=0.05)
    )
    with running(front) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        f = client.files.create(file=("in.jsonl", jsonl(3, "m-batch")), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        time.sleep(0.5)  # several passes fail to reach the provider's batch API
        assert client.batches.retrieve(batch.id).status == "in_progress"
        with running(provider, port=port):
            deadline = time.monotonic() + 20
            while batch.status != "completed":
                assert time.monotonic() < deadline, batch
                time.sleep(0.05)
                batch = client.batches.retrieve(batch.id)
        assert batch.request_counts.completed == 3
    assert Counting.admits == 3  # one hold per line, however many submissions failed
    assert sorted(r.request_id for r in spend.records) == [f"{batch.id}_{i}" for i in range(3)]
