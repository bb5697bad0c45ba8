"""Exact response cache on real SQLite files and a real Redis server (scripts/test-services.sh)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from service_urls import redis_url, required

from thrifty.multipliers.cache import (
    CacheEntry,
    CacheError,
    CachePolicy,
    ExactCache,
    RedisCacheStore,
    SQLiteCacheStore,
    cache_key,
    cache_mode,
    open_store,
    scope_of,
)


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request, tmp_path):
    """Builds stores (on the event loop that uses them) for both backends."""
    if request.param == "sqlite":
        return lambda: SQLiteCacheStore(tmp_path / "cache.sqlite3")
    url = required(redis_url(), "Redis")
    prefix = f"thrifty:test:{uuid.uuid4().hex[:8]}:"
    return lambda: RedisCacheStore(url, prefix=prefix)


def entry(model: str = "gpt-4o", text: str = "4") -> CacheEntry:
    body = b'{"choices":[{"message":{"role":"assistant","content":"' + text.encode() + b'"}}]}'
    return CacheEntry(body, model, "openai", 12, 1, 0.0002, time.time())


REQ = {"model": "gpt-4o", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}


def test_hit_for_same_tenant_and_model(store_factory):
    async def go():
        cache = ExactCache(store_factory())
        scope = scope_of("team-a", "key-1")
        assert await cache.lookup(scope, "gpt-4o", REQ, {"gpt-4o"}) is None
        await cache.store_answer(scope, "gpt-4o", REQ, entry(), ttl=60)
        # Irrelevant fields and key order do not change the key.
        same = {"temperature": 0, "stream": True, "user": "u1", **REQ}
        hit = await cache.lookup(scope, "gpt-4o", same, {"gpt-4o"})
        assert hit is not None and hit.model == "gpt-4o" and hit.cost_usd == 0.0002
        assert (cache.hits, cache.misses) == (1, 1)
        await cache.close()

    asyncio.run(go())


def test_no_tenant_sees_another_tenants_answer(store_factory):
    async def go():
        cache = ExactCache(store_factory())
        await cache.store_answer(scope_of("team-a", "key-1"), "gpt-4o", REQ, entry(), ttl=60)
        # Another team, another key without team, a key of team-a's... only team-a hits.
        assert await cache.lookup(scope_of("team-b", "key-2"), "gpt-4o", REQ, {"gpt-4o"}) is None
        assert await cache.lookup(scope_of(None, "key-1"), "gpt-4o", REQ, {"gpt-4o"}) is None
        assert await cache.lookup(scope_of(None, None), "gpt-4o", REQ, {"gpt-4o"}) is None
        assert (
            await cache.lookup(scope_of("team-a", "key-9"), "gpt-4o", REQ, {"gpt-4o"}) is not None
        )
        await cache.close()

    asyncio.run(go())


def test_never_served_across_models_unless_route_shares(store_factory):
    async def go():
        cache = ExactCache(store_factory())
        scope = scope_of("team-a", None)
        await cache.store_answer(scope, "gpt-4o", REQ, entry("gpt-4o"), ttl=60)
        other = {**REQ, "model": "gpt-4o-mini"}
        # Default namespace is the requested model: a different model misses.
        assert await cache.lookup(scope, "gpt-4o-mini", other, {"gpt-4o-mini"}) is None
        # A route that shares a namespace across models hits only for models it accepts.
        await cache.store_answer(scope, "shared:gpt", REQ, entry("gpt-4o"), ttl=60)
        assert await cache.lookup(scope, "shared:gpt", other, {"gpt-4o-mini"}) is None
        assert await cache.lookup(scope, "shared:gpt", other, {"gpt-4o-mini", "gpt-4o"}) is not None
        await cache.close()

    asyncio.run(go())


def test_ttl_expires(store_factory):
    async def go():
        cache = ExactCache(store_factory())
        await cache.store_answer("anon", "gpt-4o", REQ, entry(), ttl=0.05)
        await asyncio.sleep(0.15)
        assert await cache.lookup("anon", "gpt-4o", REQ, {"gpt-4o"}) is None
        await cache.close()

    asyncio.run(go())


def test_different_request_parameters_miss(store_factory):
    async def go():
        cache = ExactCache(store_factory())
        await cache.store_answer("anon", "gpt-4o", REQ, entry(), ttl=60)
        for change in (
            {"max_tokens": 5},
            {"messages": [{"role": "user", "content": "2+3?"}]},
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
        ):
            assert await cache.lookup("anon", "gpt-4o", {**REQ, **change}, {"gpt-4o"}) is None
        await cache.close()

    asyncio.run(go())


def test_sqlite_entries_survive_reopen(tmp_path):
    async def go():
        store = SQLiteCacheStore(tmp_path / "c.sqlite3")
        await ExactCache(store).store_answer("team:a", "m", REQ, entry("m"), ttl=60)
        await store.close()
        store = SQLiteCacheStore(tmp_path / "c.sqlite3")
        assert await ExactCache(store).lookup("team:a", "m", REQ, {"m"}) is not None
        assert store.count() == 1
        await store.close()

    asyncio.run(go())


def test_mode_selection():
    default = CachePolicy()
    assert cache_mode(None, default, {"temperature": 0}) == "exact"
    assert cache_mode(None, default, {"temperature": 0, "n": 3}) == "off"
    assert cache_mode(None, default, {}) == "off"
    assert cache_mode(None, CachePolicy(mode="semantic"), {}) == "semantic"
    assert cache_mode(" Off ", CachePolicy(mode="exact"), {"temperature": 0}) == "off"
    with pytest.raises(CacheError, match="x-thrifty-cache"):
        cache_mode("sometimes", default, {})


def test_key_scopes_and_open_store(tmp_path):
    assert cache_key("team:a", "m", REQ) != cache_key("team:b", "m", REQ)
    assert cache_key("team:a", "m", REQ) != cache_key("team:a", "n", REQ)
    for documented_default in (None, "sqlite"):  # "sqlite" is the config's default, not a file name
        store = open_store(documented_default, tmp_path)
        assert isinstance(store, SQLiteCacheStore)
        assert store.path == str(tmp_path / "response_cache.sqlite3")
        asyncio.run(store.close())


def test_sqlite_store_is_bounded(tmp_path):
    async def go():
        store = SQLiteCacheStore(tmp_path / "b.sqlite3", purge_every=10, max_entries=25)
        cache = ExactCache(store)
        for i in range(60):
            await cache.store_answer("anon", "m", {**REQ, "seed": i}, entry("m"), ttl=60 + i)
        assert store.count() <= 25 + 10
        # The newest (latest to expire) survive.
        assert await cache.lookup("anon", "m", {**REQ, "seed": 59}, {"m"}) is not None
        assert await cache.lookup("anon", "m", {**REQ, "seed": 0}, {"m"}) is None
        await store.close()

    asyncio.run(go())
