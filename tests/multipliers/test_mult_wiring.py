"""The caches in front of a real gateway (loopback HTTP, fake upstream), through the openai SDK."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from service_urls import redis_url, required

from thrifty.config import build_config
from thrifty.errors import UsageError
from thrifty.gateway.app import GatewayApp
from thrifty.gateway.assemble import create_app
from thrifty.multipliers.settings import BatchSettings, CacheSettings, RouteCache, parse_settings
from thrifty.spend.contract import (
    AuthError,
    LedgerRecord,
    OpenSpendControl,
    PolicyDenied,
    Principal,
)
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running

PRICE = {
    "input_cost_per_token": 1e-6,
    "output_cost_per_token": 2e-6,
    "context_window": 2000,
    "max_output_tokens": 100,
}


class Tenants(OpenSpendControl):
    """Bearer sk-a / sk-b -> two teams, sk-c -> a key without a team; records every settle."""

    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []
        self.forbid: set[str] = set()

    async def authenticate(self, authorization: str | None) -> Principal:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if token not in ("sk-a", "sk-b", "sk-c"):
            raise AuthError("Incorrect API key provided.")
        return Principal(key_id=token, team_id={"sk-a": "team-a", "sk-b": "team-b"}.get(token))

    def allowed(self, principal, candidates):
        ok = [c for c in candidates if c.name not in self.forbid]
        if not ok:
            raise PolicyDenied("Policy does not allow these models.")
        return ok

    async def settle(self, reservation, record: LedgerRecord) -> None:
        self.records.append(record)


def serve(upstream: FakeUpstream, tmp: Path, settings: CacheSettings):
    config = build_config(
        {
            "data_dir": str(tmp),
            "frontier_model": "m-ok",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {
                "m-ok": {"provider": "ok", "route": False, **PRICE},
                "m-ok2": {"provider": "ok", "route": False, **PRICE},
                "m-sem": {"provider": "ok", "route": False, **PRICE},
            },
            "retry": {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02},
        },
        env={},
    )
    spend = Tenants()
    app = create_app(replace(config, cache=settings, batches=BatchSettings(enabled=False)), spend=spend)
    APPS.append(app)
    return spend, app


def one_model_config(upstream: FakeUpstream, tmp: Path):
    """The gateway config with the one fixed model m-ok on the fake upstream."""
    return build_config(
        {
            "data_dir": str(tmp),
            "frontier_model": "m-ok",
            "providers": {"ok": {"type": "openai", "base_url": upstream.base_url}},
            "models": {"m-ok": {"provider": "ok", "route": False, **PRICE}},
        },
        env={},
    )


APPS: list[GatewayApp] = []


def ask(client: openai.OpenAI, model: str = "m-ok", text: str = "What is 2+2?", **kw: Any):
    """One call, then wait until its answer is in the cache (stored after the response is sent)."""
    out = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )
    deadline = time.monotonic() + 5
    while APPS and APPS[-1].pending_stores and time.monotonic() < deadline:
        time.sleep(0.002)
    return out


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_exact_cache_hits_per_tenant_and_model_and_is_billed_as_a_hit(upstream, tmp_path, backend):
    if backend == "redis":
        url = required(redis_url(), "Redis")
        backend = url.rsplit("/", 1)[0] + "/" + str(1 + uuid.uuid4().int % 14)  # a fresh-ish db
        import redis

        redis.Redis.from_url(backend).flushdb()
    else:
        backend = str(tmp_path / "cache.sqlite3")
    spend, app = serve(
        upstream,
        tmp_path,
        CacheSettings(
            backend=backend,
            routes={
                "m-ok2": RouteCache(share_with=("m-ok",)),
                "m-sem": RouteCache(mode="semantic"),
            },
        ),
    )
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        b = openai.OpenAI(base_url=url + "/v1", api_key="sk-b", max_retries=0)
        c = openai.OpenAI(base_url=url + "/v1", api_key="sk-c", max_retries=0)
        first = ask(a, temperature=0)
        assert first.headers["x-thrifty-cache"] == "miss"
        before = upstream.hits
        second = ask(a, temperature=0)
        assert second.headers["x-thrifty-cache"] == "hit-exact" and upstream.hits == before
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert float(second.headers["x-thrifty-saved-usd"]) > 0

        # Other tenants (another team, a key without a team) never see team-a's answer.
        assert ask(b, temperature=0).headers["x-thrifty-cache"] == "miss"
        assert ask(c, temperature=0).headers["x-thrifty-cache"] == "miss"
        # Other models miss, unless the route shares: m-ok2 accepts m-ok's answers... but only in
        # its own namespace, so it fills once and then hits.
        assert ask(a, "m-ok2", temperature=0).headers["x-thrifty-cache"] == "miss"
        assert ask(a, "m-ok2", temperature=0).headers["x-thrifty-cache"] == "hit-exact"
        # Not deterministic and no opt-in: not cached; opt-in by header: cached.
        assert "x-thrifty-cache" not in ask(a, temperature=0.7).headers
        assert (
            ask(a, text="hi", temperature=0.7, extra_headers={"x-thrifty-cache": "exact"}).headers[
                "x-thrifty-cache"
            ]
            == "miss"
        )
        assert (
            ask(a, text="hi", temperature=0.7, extra_headers={"x-thrifty-cache": "exact"}).headers[
                "x-thrifty-cache"
            ]
            == "hit-exact"
        )
        assert (
            "x-thrifty-cache"
            not in ask(a, temperature=0, extra_headers={"x-thrifty-cache": "off"}).headers
        )

        # Streamed request served from the cache.
        stream = a.chat.completions.create(
            model="m-ok",
            messages=[{"role": "user", "content": "What is 2+2?"}],
            temperature=0,
            stream=True,
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text == first.parse().choices[0].message.content

        # A streamed miss is stored too, and served to a non-streamed request.
        streamed = "".join(
            ch.choices[0].delta.content or ""
            for ch in a.chat.completions.create(
                model="m-ok",
                messages=[{"role": "user", "content": "stream me"}],
                temperature=0,
                stream=True,
            )
            if ch.choices
        )
        deadline = time.monotonic() + 5
        while app.pending_stores and time.monotonic() < deadline:
            time.sleep(0.002)
        again = ask(a, text="stream me", temperature=0)
        assert again.headers["x-thrifty-cache"] == "hit-exact"
        assert again.parse().choices[0].message.content == streamed

        # Semantic route: a whitespace/case variant hits, a different question does not.
        assert (
            ask(a, "m-sem", "What is the capital of France?").headers["x-thrifty-cache"] == "miss"
        )
        hit = ask(a, "m-sem", "what is the  capital of France?")
        assert hit.headers["x-thrifty-cache"] == "hit-semantic"
        assert ask(a, "m-sem", "What is the capital of Spain?").headers["x-thrifty-cache"] == "miss"
        assert (
            ask(b, "m-sem", "What is the capital of France?").headers["x-thrifty-cache"] == "miss"
        )

        # A policy that now forbids the model also forbids its cached answers.
        spend.forbid.add("m-ok")
        with pytest.raises(openai.PermissionDeniedError):
            ask(a, temperature=0)
        spend.forbid.clear()

        # Bad header: a clear 400 in OpenAI's format.
        with pytest.raises(openai.BadRequestError, match="x-thrifty-cache"):
            ask(a, extra_headers={"x-thrifty-cache": "sometimes"})
        # Bad bodies still get the gateway's own errors.
        r = httpx.post(
            url + "/v1/chat/completions", content=b"{nope", headers={"authorization": "Bearer sk-a"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"

    hits = [r for r in spend.records if r.cache_hit]
    assert len(hits) == 6  # exact, m-ok2, header opt-in, stream, stored stream, semantic
    assert all(r.cost_usd == 0 and r.prompt_tokens > 0 and r.provider == "cache" for r in hits)
    assert all(r.team_id == "team-a" for r in hits)
    assert all("saved $" in (r.route_reason or "") for r in hits)


def test_settings_validation():
    cache, batches = parse_settings(
        {"cache": {"ttl": 60, "routes": {"m": {"mode": "semantic"}}}, "batches": {"concurrency": 2}}
    )
    assert cache is not None and cache.ttl == 60 and cache.routes["m"].mode == "semantic"
    assert batches.concurrency == 2 and batches.enabled and batches.lease == 60
    assert parse_settings({"batches": {"lease": 1.5}})[1].lease == 1.5
    assert parse_settings({})[0] is None
    assert cache.memory_mb == 32  # the in-memory tier is on by default
    assert parse_settings({"cache": {"memory_mb": 0}})[0].memory_mb == 0  # and can be off
    for bad in (
        {"cache": {"memory_mb": -1}},
        {"cache": {"memory_mb": "64MB"}},
        {"batches": {"lease": 0}},
        {"batches": {"lease": "1m"}},
        {"cache": {"ttl": -1}},
        {"cache": {"routes": {"m": {"mode": "fuzzy"}}}},
        {"cache": {"semantic_threshold": 2}},
        {"cache": {"routes": {"m": {"share_with": "x"}}}},
    ):
        with pytest.raises(UsageError):
            parse_settings(bad)
    _ = asyncio


def test_batches_resume_at_startup_and_are_served_by_the_wrapper(upstream, tmp_path):
    from thrifty.multipliers.batches import BatchStore
    from thrifty.multipliers.settings import BatchSettings
    from thrifty.spend import database_url

    async def submit() -> str:
        # With no spend database of its own, the wrapper keeps batches in data_dir's spend.db.
        store = BatchStore(database_url({}, tmp_path))
        line = (
            b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": '
            b'{"model": "m-ok", "messages": [{"role": "user", "content": "hi"}]}}\n'
        )
        f = await store.create_file("key:sk-a", "batch", "in.jsonl", line)
        batch = await store.create_batch(
            "key:sk-a", {"key_id": "sk-a"}, f["id"], "/v1/chat/completions", "24h"
        )
        await store.close()
        return batch["id"]

    batch_id = asyncio.run(submit())  # left unfinished, as by a gateway that stopped
    config = one_model_config(upstream, tmp_path)

    class KeyOnly(Tenants):
        async def authenticate(self, authorization):
            return Principal(key_id=(authorization or "").removeprefix("Bearer ").strip() or None)

    spend = KeyOnly()
    app = create_app(replace(config, cache=None, batches=BatchSettings()), spend=spend)
    with running(app) as url:
        deadline = time.monotonic() + 10
        while not any(r.batch for r in spend.records):  # resumed at startup, before any request
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        batch = client.batches.retrieve(batch_id)
        while batch.status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
            batch = client.batches.retrieve(batch_id)
        assert batch.request_counts.completed == 1
        assert client.chat.completions.create(
            model="m-ok", messages=[{"role": "user", "content": "x"}]
        ).choices
    assert [r.request_id for r in spend.records if r.batch] == [f"{batch_id}_0"]


def test_hits_are_ledger_rows_with_zero_cost_in_the_real_ledger(upstream, tmp_path):
    import sqlite3

    from thrifty.spend import admin_ops
    from thrifty.spend.control import DbSpendControl

    spend = DbSpendControl(
        f"sqlite:///{tmp_path / 'spend.db'}", tmp_path / "journal", admin_key="sk-thr-admin-x"
    )
    secrets = {}
    for team in ("alpha", "beta"):
        admin_ops.create_team(spend.db, team)
        secrets[team] = admin_ops.create_key(spend.db, team_id=team)[1]
    spend.reload()
    config = one_model_config(upstream, tmp_path)
    app = create_app(replace(config, cache=CacheSettings(), batches=BatchSettings(enabled=False)), spend=spend)
    APPS.append(app)
    with running(app) as url:
        alpha = openai.OpenAI(base_url=url + "/v1", api_key=secrets["alpha"], max_retries=0)
        beta = openai.OpenAI(base_url=url + "/v1", api_key=secrets["beta"], max_retries=0)
        assert ask(alpha, temperature=0).headers["x-thrifty-cache"] == "miss"
        assert ask(alpha, temperature=0).headers["x-thrifty-cache"] == "hit-exact"
        assert ask(beta, temperature=0).headers["x-thrifty-cache"] == "miss"
        with pytest.raises(openai.AuthenticationError):
            ask(
                openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0),
                temperature=0,
            )
    spend.flush()
    rows = (
        sqlite3.connect(tmp_path / "spend.db")
        .execute(
            "SELECT team_id, cache_hit, cost_nanos, prompt_tokens, input_price FROM ledger ORDER BY ts"
        )
        .fetchall()
    )
    assert [(r[0], r[1]) for r in rows] == [("alpha", 0), ("alpha", 1), ("beta", 0)]
    hit = rows[1]
    assert hit[2] == 0 and hit[3] > 0 and hit[4] > 0  # zero cost; tokens and prices give the saving
    assert rows[0][2] > 0


def test_a_cache_that_is_down_is_a_miss_not_an_error(upstream, tmp_path):
    from thrifty.testing.server import free_port

    spend, app = serve(
        upstream, tmp_path, CacheSettings(backend=f"redis://127.0.0.1:{free_port()}/0")
    )
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        for _ in range(2):
            r = ask(a, temperature=0)
            assert r.status_code == 200 and r.headers["x-thrifty-cache"] == "miss"
    assert not any(r.cache_hit for r in spend.records)


def test_anthropic_messages_are_cached_in_their_own_namespace(upstream, tmp_path):
    import anthropic

    spend, app = serve(upstream, tmp_path, CacheSettings())
    with running(app) as url:
        client = anthropic.Anthropic(base_url=url, api_key="sk-a", max_retries=0)

        def call(mode: str = "exact"):
            out = client.messages.with_raw_response.create(
                model="m-ok",
                max_tokens=20,
                messages=[{"role": "user", "content": "2+2?"}],
                extra_headers={"x-thrifty-cache": mode},
            )
            deadline = time.monotonic() + 5
            while app.pending_stores and time.monotonic() < deadline:
                time.sleep(0.002)
            return out

        first = call()
        assert first.headers["x-thrifty-cache"] == "miss"
        second = call()
        assert second.headers["x-thrifty-cache"] == "hit-exact"
        assert second.parse().content[0].text == first.parse().content[0].text
        # The same body on the OpenAI endpoint is another API: it never gets the Messages answer.
        same = httpx.post(
            url + "/v1/chat/completions",
            headers={"authorization": "Bearer sk-a", "x-thrifty-cache": "exact"},
            json={
                "model": "m-ok",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "2+2?"}],
            },
        )
        assert (
            same.headers["x-thrifty-cache"] == "miss" and same.json()["object"] == "chat.completion"
        )
        with pytest.raises(anthropic.BadRequestError):
            call("maybe")
    hits = [r for r in spend.records if r.cache_hit]
    assert [r.endpoint for r in hits] == ["messages"]


def test_semantic_hits_survive_a_gateway_restart(upstream, tmp_path):
    settings = CacheSettings(
        backend=str(tmp_path / "cache.sqlite3"), routes={"m-sem": RouteCache(mode="semantic")}
    )
    _, app = serve(upstream, tmp_path, settings)
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        assert ask(a, "m-sem", "Name the largest planet.").headers["x-thrifty-cache"] == "miss"
    _, app = serve(upstream, tmp_path, settings)  # a new process: empty index, same store
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        deadline = time.monotonic() + 5
        while (app.pending_stores or app.pipeline.cache.tasks) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (
            ask(a, "m-sem", "name the largest planet.").headers["x-thrifty-cache"] == "hit-semantic"
        )


def test_prefix_affinity_keeps_a_tenants_prefix_on_one_deployment(upstream, tmp_path):
    from collections import Counter

    from thrifty.multipliers.settings import AffinitySettings

    second = FakeUpstream("ok")
    second.start()
    try:
        config = build_config(
            {
                "data_dir": str(tmp_path),
                "frontier_model": "pool",
                "providers": {
                    "vllm-a": {"type": "openai", "base_url": upstream.base_url},
                    "vllm-b": {"type": "openai", "base_url": second.base_url},
                },
                "models": {
                    "pool": {
                        "deployments": [
                            {"provider": "vllm-a", "model": "llama"},
                            {"provider": "vllm-b", "model": "llama"},
                        ],
                        "route": False,
                        **PRICE,
                    }
                },
            },
            env={},
        )
        app = create_app(
            replace(
                config,
                cache=None,
                batches=BatchSettings(enabled=False),
                affinity=AffinitySettings(models=("pool",)),
            ),
            spend=Tenants(),
        )
        with running(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)

            def provider(system: str, question: str) -> str:
                return client.chat.completions.with_raw_response.create(
                    model="pool",
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                ).headers["x-thrifty-provider"]

            tenant = (
                "You are ACME's support assistant. Policies: " + "refunds within 30 days. " * 40
            )
            assert len(Counter(provider(tenant, f"question {i}") for i in range(12))) == 1
            assert {provider(f"tenant {i} " + "x" * 600, "hi") for i in range(30)} == {
                "vllm-a",
                "vllm-b",
            }
    finally:
        second.stop()
    with pytest.raises(UsageError, match="two or more deployments"):
        create_app(replace(config, affinity=AffinitySettings(models=("nope",))), spend=Tenants())


def test_a_hit_the_ledger_cannot_record_is_not_served(upstream, tmp_path):
    spend, app = serve(upstream, tmp_path, CacheSettings())
    with running(app) as url:
        a = openai.OpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        assert ask(a, temperature=0).headers["x-thrifty-cache"] == "miss"

        async def broken(reservation, record):
            raise RuntimeError("ledger down")

        spend.settle = broken
        with pytest.raises(openai.APIStatusError) as err:
            ask(a, temperature=0)
        assert err.value.status_code == 503
        assert err.value.body["code"] == "ledger_unavailable"
