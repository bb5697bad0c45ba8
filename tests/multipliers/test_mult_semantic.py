"""Semantic cache with the router's real embedder, over a real SQLite store."""

from __future__ import annotations

import asyncio
import time

import pytest

from thrifty.multipliers.cache import CacheEntry, SQLiteCacheStore, scope_of
from thrifty.multipliers.semantic import (
    DEFAULT_THRESHOLD,
    SemanticCache,
    fingerprint,
    lexical_similarity,
    split_request,
)
from thrifty.router.embed import default_embedder

Q = (
    "Megan bought olive oil for Felicia because _ hated to cook but loved to eat.\n"
    "A) Megan\nB) Felicia\nAnswer:"
)
TWIN = (
    "Megan bought olive oil for Felicia because _ loved to cook but hated to eat.\n"
    "A) Megan\nB) Felicia\nAnswer:"
)


@pytest.fixture(scope="module")
def embed():
    return default_embedder(show_progress=False).embed_one


def req(text: str, model: str = "gpt-4o", system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"model": model, "messages": messages + [{"role": "user", "content": text}]}


def entry(model: str = "gpt-4o") -> CacheEntry:
    return CacheEntry(b'{"choices":[]}', model, "openai", 30, 1, 0.001, time.time())


def run(embed, tmp_path, body):
    async def go():
        cache = SemanticCache(SQLiteCacheStore(tmp_path / "s.sqlite3"), embed)
        try:
            return await body(cache)
        finally:
            await cache.store.close()

    return asyncio.run(go())


def test_surface_variant_hits_same_tenant_only(embed, tmp_path):
    async def body(cache):
        a, b = scope_of("team-a", None), scope_of("team-b", None)
        await cache.store_answer(a, "gpt-4o", req(Q), entry(), ttl=60)
        variant = "  " + Q.replace("\n", "\n ") + "  "
        hit = await cache.lookup(a, "gpt-4o", req(variant), {"gpt-4o"})
        assert hit is not None and hit.similarity >= DEFAULT_THRESHOLD
        assert await cache.lookup(b, "gpt-4o", req(variant), {"gpt-4o"}) is None
        assert await cache.lookup(scope_of(None, "k"), "gpt-4o", req(Q), {"gpt-4o"}) is None

    run(embed, tmp_path, body)


def test_never_across_models_or_request_shapes(embed, tmp_path):
    async def body(cache):
        await cache.store_answer("team:a", "gpt-4o", req(Q), entry(), ttl=60)
        assert (
            await cache.lookup("team:a", "gpt-4o-mini", req(Q, "gpt-4o-mini"), {"gpt-4o-mini"})
            is None
        )
        # A route sharing a namespace still needs the producing model to be accepted.
        await cache.store_answer("team:a", "shared", req(Q), entry("gpt-4o"), ttl=60)
        assert (
            await cache.lookup("team:a", "shared", req(Q, "gpt-4o-mini"), {"gpt-4o-mini"}) is None
        )
        # A different system prompt is a different request, however close the question.
        assert (
            await cache.lookup("team:a", "gpt-4o", req(Q, system="Answer in French."), {"gpt-4o"})
            is None
        )

    run(embed, tmp_path, body)


def test_word_order_twin_and_changed_numbers_miss(embed, tmp_path):
    # The static embedder cannot tell these apart; the lexical check must.
    assert float(embed(Q) @ embed(TWIN)) > 0.999

    async def body(cache):
        await cache.store_answer("team:a", "m", req(Q), entry("m"), ttl=60)
        assert await cache.lookup("team:a", "m", req(TWIN), {"m"}) is None
        await cache.store_answer("team:a", "m", req("What is 12 + 30?"), entry("m"), ttl=60)
        assert await cache.lookup("team:a", "m", req("What is 12 + 31?"), {"m"}) is None
        assert await cache.lookup("team:a", "m", req("what is 12 + 30?"), {"m"}) is not None

    run(embed, tmp_path, body)


def test_lexical_similarity_and_split():
    assert lexical_similarity(fingerprint("a b c"), fingerprint("A  b c")) == 1.0
    assert lexical_similarity(fingerprint("x 1"), fingerprint("x 2")) == 0.0
    shape1, text1 = split_request(req("hello", system="s"))
    shape2, text2 = split_request({**req("bye", system="s"), "stream": True, "user": "u"})
    assert shape1 == shape2 and (text1, text2) == ("hello", "bye")


def test_invalid_threshold(embed, tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(None, embed, threshold=1.5)  # type: ignore[arg-type]


def test_chunked_similarities_equal_the_direct_product():
    import numpy as np

    from thrifty.multipliers.semantic import similarities

    rng = np.random.default_rng(0)
    m, v = rng.random((2500, 16), dtype=np.float32), rng.random(16, dtype=np.float32)
    assert np.allclose(similarities(m, v), m @ v) and similarities(m[:10], v).shape == (10,)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_index_is_rebuilt_from_the_store_after_a_restart(embed, tmp_path, backend):
    import uuid

    from thrifty.multipliers.cache import RedisCacheStore

    if backend == "redis":
        from service_urls import redis_url, required

        url = required(redis_url(), "Redis")
        prefix = f"thrifty:test:{uuid.uuid4().hex[:8]}:"
        make = lambda: RedisCacheStore(url, prefix=prefix)
    else:
        make = lambda: SQLiteCacheStore(tmp_path / "s.sqlite3")

    async def before():
        cache = SemanticCache(make(), embed)
        await cache.store_answer("team:a", "m", req(Q, "m"), entry("m"), ttl=60)
        await cache.store.close()

    async def after():
        cache = SemanticCache(make(), embed)
        assert await cache.lookup("team:a", "m", req(Q.lower(), "m"), {"m"}) is None  # index empty
        assert await cache.rebuild() == 1
        hit = await cache.lookup("team:a", "m", req(Q.lower(), "m"), {"m"})
        assert hit is not None and hit.entry.model == "m"
        assert await cache.lookup("team:b", "m", req(Q.lower(), "m"), {"m"}) is None
        await cache.store.close()

    asyncio.run(before())
    asyncio.run(after())


def test_a_new_machine_uses_the_routers_shipped_table_instead_of_distilling(tmp_path, monkeypatch):
    """The semantic cache's embedder is the table the packaged router ships: a new machine does
    not distil MiniLM again (minutes of CPU) nor write a table of its own."""
    from thrifty.router import embed

    monkeypatch.setenv("THRIFTY_CACHE_DIR", str(tmp_path / "cache"))

    def distill(*args, **kwargs):
        raise AssertionError("distilled MiniLM although the router ships its table")

    monkeypatch.setattr(embed, "distill", distill)
    embedder = embed.default_embedder(show_progress=False)
    assert embedder.dim == embed.STATIC_DIM and embedder.ident.startswith("minilm-l6-int8")
    assert not (tmp_path / "cache").exists()
