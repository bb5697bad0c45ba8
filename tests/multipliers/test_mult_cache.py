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
    MemoryTier,
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


@pytest.fixture(params=[0, 1 << 20], ids=["store-only", "memory-tier"])
def memory(request) -> int:
    """Every rule holds with and without the in-memory tier in front of the store."""
    return request.param


def entry(model: str = "gpt-4o", text: str = "4") -> CacheEntry:
    body = b'{"choices":[{"message":{"role":"assistant","content":"' + text.encode() + b'"}}]}'
    return CacheEntry(body, model, "openai", 12, 1, 0.0002, time.time())


REQ = {"model": "gpt-4o", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}


def test_hit_for_same_tenant_and_model(store_factory, memory):
    async def go():
        cache = ExactCache(store_factory(), memory_bytes=memory)
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


def test_no_tenant_sees_another_tenants_answer(store_factory, memory):
    async def go():
        cache = ExactCache(store_factory(), memory_bytes=memory)
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


def test_never_served_across_models_unless_route_shares(store_factory, memory):
    async def go():
        cache = ExactCache(store_factory(), memory_bytes=memory)
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


def test_ttl_expires(store_factory, memory):
    async def go():
        cache = ExactCache(store_factory(), memory_bytes=memory)
        await cache.store_answer("anon", "gpt-4o", REQ, entry(), ttl=0.05)
        await asyncio.sleep(0.15)
        assert await cache.lookup("anon", "gpt-4o", REQ, {"gpt-4o"}) is None
        await cache.close()

    asyncio.run(go())


def test_different_request_parameters_miss(store_factory, memory):
    async def go():
        cache = ExactCache(store_factory(), memory_bytes=memory)
        await cache.store_answer("anon", "gpt-4o", REQ, entry(), ttl=60)
        for change in (
            {"max_tokens": 5},
            {"messages": [{"role": "user", "content": "2+3?"}]},
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
        ):
            assert await cache.lookup("anon", "gpt-4o", {**REQ, **change}, {"gpt-4o"}) is None
        await cache.close()

    asyncio.run(go())


class CountingStore:
    """A store that counts its reads (to see which lookups the memory tier answered)."""

    def __init__(self, inner) -> None:
        self.inner, self.gets = inner, 0

    async def get(self, key):
        self.gets += 1
        return await self.inner.get(key)

    async def put(self, key, entry, ttl):
        await self.inner.put(key, entry, ttl)

    async def close(self):
        await self.inner.close()


def test_memory_tier_answers_hot_entries_and_fills_from_the_store(tmp_path):
    async def go():
        path = tmp_path / "c.sqlite3"
        writer = ExactCache(SQLiteCacheStore(path))  # another process, sharing the store
        await writer.store_answer("anon", "gpt-4o", REQ, entry(text="from-store"), ttl=60)
        store = CountingStore(SQLiteCacheStore(path))
        cache = ExactCache(store, memory_bytes=1 << 20)
        for _ in range(3):
            hit = await cache.lookup("anon", "gpt-4o", REQ, {"gpt-4o"})
            assert hit is not None and b"from-store" in hit.body
        assert store.gets == 1  # read once, then served from memory
        # What this process stores is served from memory at once; a miss still reads the store.
        other = {**REQ, "max_tokens": 3}
        await cache.store_answer("anon", "gpt-4o", other, entry(text="mine"), ttl=60)
        assert b"mine" in (await cache.lookup("anon", "gpt-4o", other, {"gpt-4o"})).body
        assert await cache.lookup("anon", "gpt-4o", {**REQ, "n": 1}, {"gpt-4o"}) is None
        assert store.gets == 2
        # The tier never widens who may read an entry: another tenant or model still misses.
        assert await cache.lookup("team:b", "gpt-4o", REQ, {"gpt-4o"}) is None
        assert await cache.lookup("anon", "gpt-4o", REQ, {"gpt-4o-mini"}) is None
        await writer.close()
        await cache.close()

    asyncio.run(go())


def test_memory_tier_keeps_an_entry_no_longer_than_the_store(tmp_path):
    async def go():
        store = CountingStore(SQLiteCacheStore(tmp_path / "c.sqlite3"))
        cache = ExactCache(store, memory_bytes=1 << 20)
        await cache.store_answer("anon", "gpt-4o", REQ, entry(), ttl=0.1)
        assert await cache.lookup("anon", "gpt-4o", REQ, {"gpt-4o"}) is not None
        await asyncio.sleep(0.2)
        assert await cache.lookup("anon", "gpt-4o", REQ, {"gpt-4o"}) is None
        assert len(cache.memory) == 0
        await cache.close()

    asyncio.run(go())


def test_memory_tier_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    now = time.time()

    def sized(n: int) -> CacheEntry:
        e = CacheEntry(b"x" * n, "m", None, 1, 1, 0.0, now)
        e.expires = now + 60
        return e

    tier = MemoryTier(max_bytes=250)
    tier.put("a", sized(100), now)
    tier.put("b", sized(100), now)
    assert tier.get("a", now) is not None  # a is now the most recently used
    tier.put("c", sized(100), now)  # over 250: b goes, not a
    assert tier.get("b", now) is None and tier.get("a", now) is not None
    assert tier.get("c", now) is not None and tier.bytes == 200
    tier.put("huge", sized(300), now)  # larger than the whole tier: not kept, nothing evicted
    assert tier.get("huge", now) is None and len(tier) == 2
    expired = sized(10)
    expired.expires = now - 1
    tier.put("old", expired, now)
    assert tier.get("old", now) is None


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


def test_sqlite_answers_stored_together_are_one_transaction(tmp_path):
    """Group commit: answers stored within the batch delay are written in one transaction and
    each put returns once it is written; a failed write fails every put of its batch (and no
    entry of it is kept); close() writes what is still waiting."""

    async def go():
        store = SQLiteCacheStore(tmp_path / "c.sqlite3", batch_delay=0.05)
        writes = []
        put_many = store._put_many

        def counted(items):
            writes.append(len(items))
            put_many(items)

        store._put_many = counted

        def answer(i: int) -> CacheEntry:
            return CacheEntry(b'{"n": %d}' % i, "m", None, 1, 1, 0.001, time.time(), scope="team:a")

        await asyncio.gather(*(store.put(f"k{i}", answer(i), 60) for i in range(20)))
        assert writes == [20]
        assert store.count() == 20 and store.get_sync("k7").body == b'{"n": 7}'

        bad = answer(99)
        bad.body = b"\xff"  # not UTF-8: its serialisation fails inside the batch
        results = await asyncio.gather(store.put("ok", answer(1), 60), store.put("bad", bad, 60),
                                       return_exceptions=True)
        assert writes == [20, 2]
        assert all(isinstance(r, UnicodeDecodeError) for r in results), results
        assert store.get_sync("ok") is None and store.count() == 20  # rolled back together

        waiting = asyncio.ensure_future(store.put("late", answer(3), 60))
        await asyncio.sleep(0)  # queued, its batch not due yet
        await store.close()
        await waiting
        reopened = SQLiteCacheStore(tmp_path / "c.sqlite3")
        assert reopened.get_sync("late") is not None
        await reopened.close()

    asyncio.run(go())
