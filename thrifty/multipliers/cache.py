"""Exact response cache: the same request from the same tenant gets the stored answer.

Three rules make it safe, and every lookup enforces them:

* **Tenant scope.** Every key starts with the caller's scope (its team, else its API key;
  :func:`scope_of`), so no tenant can ever read another's answer, even with an identical
  request. The scope is also stored beside the entry and checked on read.
* **Same model.** The key holds a *model namespace*: the requested model by default, so an
  answer cached for ``gpt-4o`` is never served to a request for ``gpt-4o-mini``. A route may
  name a shared namespace on purpose (``CachePolicy.namespace``); on top of that, a hit is
  refused unless the model that actually produced it is among those the request accepts.
* **Deterministic or asked for.** Only requests that opt in (route or header) or ask for
  ``temperature: 0`` are cached; fields that cannot change the answer (``stream``, ``user``,
  ``metadata``...) are dropped from the key, everything else is kept verbatim.

Backends: :class:`SQLiteCacheStore` (default; one file, stdlib ``sqlite3``) and
:class:`RedisCacheStore` (``redis.asyncio``, when configured). SQLite reads are a single
primary-key lookup on the event loop (tens of microseconds, page-cached); writes go to one
background thread so a slow fsync never stalls a request. In front of either, a
:class:`MemoryTier` keeps this process's most recently used entries (bounded in bytes), so a
hot answer costs neither a database read nor a round trip to Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = [
    "CacheEntry",
    "CachePolicy",
    "CacheStore",
    "ExactCache",
    "MemoryTier",
    "RedisCacheStore",
    "SQLiteCacheStore",
    "cache_key",
    "cache_mode",
    "normalize_request",
    "scope_of",
]

# Request fields that cannot change the answer: left out of the key.
IGNORED_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls_hint",
        "model",
    }
)
MODES = ("exact", "semantic", "off")


class CacheError(ValueError):
    """A cache setting or header the gateway must refuse with a 400."""


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """A route's cache settings.

    ``mode``: ``"exact"``, ``"semantic"`` or ``"off"`` (``None``: only deterministic requests,
    ``temperature == 0``, use the exact cache). ``ttl``: seconds an entry lives.
    ``namespace``: models sharing answers (default: each model its own).
    """

    mode: str | None = None
    ttl: float = 3600.0
    namespace: str | None = None


@dataclass(slots=True)
class CacheEntry:
    """A stored answer and what producing it cost (the saving of every later hit)."""

    body: bytes  # the response JSON as the upstream returned it
    model: str  # the model that produced it
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    created: float
    scope: str = ""
    query: str | None = None  # semantic entries: the matched text, so the index can be rebuilt
    expires: float = 0.0  # when the store lets it go (0: unknown, as in entries older than it)

    def dumps(self) -> bytes:
        d = {
            "b": self.body.decode(),
            "m": self.model,
            "p": self.provider,
            "pt": self.prompt_tokens,
            "ct": self.completion_tokens,
            "c": self.cost_usd,
            "t": self.created,
            "s": self.scope,
            "x": self.expires,
        }
        if self.query is not None:
            d["q"] = self.query
        return orjson.dumps(d)

    @classmethod
    def loads(cls, raw: bytes) -> CacheEntry:
        d = orjson.loads(raw)
        return cls(
            d["b"].encode(),
            d["m"],
            d["p"],
            d["pt"],
            d["ct"],
            d["c"],
            d["t"],
            d["s"],
            d.get("q"),
            d.get("x") or 0.0,
        )


def scope_of(team_id: str | None, key_id: str | None) -> str:
    """The tenant a cached answer belongs to: the team, else the key. Callers without either
    (spend control off) share one anonymous scope, which is the only tenant there is."""
    if team_id:
        return "team:" + team_id
    if key_id:
        return "key:" + key_id
    return "anon"


def cache_mode(header: str | None, policy: CachePolicy, body: Mapping[str, Any]) -> str:
    """Which cache a request uses: the ``x-thrifty-cache`` header wins over the route; with
    neither, deterministic requests (``temperature`` 0, one choice) use the exact cache."""
    if header is not None:
        mode = header.strip().lower()
        if mode not in MODES:
            raise CacheError(
                f"Invalid x-thrifty-cache header {header!r}: expected one of {', '.join(MODES)}."
            )
        return mode
    if policy.mode is not None:
        return policy.mode
    if body.get("temperature") == 0 and body.get("n") in (None, 1):
        return "exact"
    return "off"


def normalize_request(body: Mapping[str, Any]) -> bytes:
    """The request as the key sees it: answer-relevant fields only, keys sorted."""
    return orjson.dumps(
        {k: v for k, v in body.items() if k not in IGNORED_FIELDS}, option=orjson.OPT_SORT_KEYS
    )


def cache_key(scope: str, namespace: str, body: Mapping[str, Any]) -> str:
    h = hashlib.blake2b(normalize_request(body), digest_size=20).hexdigest()
    return f"{scope}\x1f{namespace}\x1f{h}"


class CacheStore(Protocol):
    async def get(self, key: str) -> CacheEntry | None: ...
    async def put(self, key: str, entry: CacheEntry, ttl: float) -> None: ...
    async def scan(self, prefix: str) -> list[tuple[str, CacheEntry]]: ...
    async def close(self) -> None: ...


class SQLiteCacheStore:
    """One table, ``key -> (scope, expires, value)``; WAL so readers never wait on the writer.
    Every ``purge_every`` writes, expired entries are deleted, then the soonest to expire
    beyond ``max_entries`` (the disk bound; Redis bounds itself with ``maxmemory``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        purge_every: int = 1000,
        max_entries: int = 1_000_000,
        batch_delay: float = 0.01,
    ) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thrifty-cache")
        self._wconn = self._writer.submit(self._connect).result()
        self._rconn = self._connect()
        self._puts = 0
        self._purge_every = purge_every
        self.max_entries = max_entries
        # Group commit: the answers stored within batch_delay seconds of the first are written
        # in one transaction with one hand-off to the writer thread (a transaction and a hand-off
        # per answer made a miss at one connection cost 62 system calls; batched, 38). An
        # answer is a hit once written.
        self.batch_delay = batch_delay
        self._batches: dict[asyncio.AbstractEventLoop, list[tuple[str, CacheEntry, float, asyncio.Future]]] = {}

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=5.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a lost cache entry on power loss is harmless
        conn.execute(
            "CREATE TABLE IF NOT EXISTS response_cache (key TEXT PRIMARY KEY, scope TEXT NOT NULL, "
            "expires REAL NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE INDEX IF NOT EXISTS response_cache_expires ON response_cache (expires)"
        )
        return conn

    def get_sync(self, key: str) -> CacheEntry | None:
        row = self._rconn.execute(
            "SELECT scope, expires, value FROM response_cache WHERE key = ?", (key,)
        ).fetchone()
        if row is None or row[1] < time.time():
            return None
        entry = CacheEntry.loads(row[2])
        entry.expires = row[1]
        return entry if entry.scope == row[0] else None

    async def get(self, key: str) -> CacheEntry | None:
        return self.get_sync(key)

    def _put_many(self, items: list[tuple[str, CacheEntry, float]]) -> None:
        now = time.time()
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")  # (fails alone: nothing to roll back)
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO response_cache VALUES (?, ?, ?, ?)",
                [(key, e.scope, e.expires or now + ttl, e.dumps()) for key, e, ttl in items],
            )
            before, self._puts = self._puts, self._puts + len(items)
            if self._puts // self._purge_every > before // self._purge_every:
                self._purge(now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _purge(self, now: float) -> None:
        """Expired entries go, then the soonest to expire beyond ``max_entries``."""
        self._wconn.execute("DELETE FROM response_cache WHERE expires < ?", (now,))
        over = (
            self._wconn.execute("SELECT count(*) FROM response_cache").fetchone()[0]
            - self.max_entries
        )
        if over > 0:
            self._wconn.execute(
                "DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache"
                " ORDER BY expires LIMIT ?)",
                (over,),
            )

    async def put(self, key: str, entry: CacheEntry, ttl: float) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = []
            loop.call_later(self.batch_delay, self._write_batch, loop)
        batch.append((key, entry, ttl, done))
        await done

    def _write_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batches.pop(loop, None)
        if not batch:
            return
        written = self._writer.submit(self._put_many, [(k, e, t) for k, e, t, _ in batch])

        def settle() -> None:  # on the loop, once the writer thread is done
            error = written.exception()
            for *_, done in batch:
                if not done.done():
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)

        def handed_back(_: Any) -> None:  # in the writer thread
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed meanwhile: nobody waits for these puts
                pass

        written.add_done_callback(handed_back)

    def count(self) -> int:
        return self._rconn.execute("SELECT count(*) FROM response_cache").fetchone()[0]

    def _scan(self, prefix: str) -> list[tuple[str, CacheEntry]]:
        rows = self._wconn.execute(
            "SELECT key, value FROM response_cache WHERE key >= ? AND key < ? AND expires >= ?",
            (prefix, prefix + "\U0010ffff", time.time()),
        ).fetchall()
        return [(k, CacheEntry.loads(v)) for k, v in rows]

    async def scan(self, prefix: str) -> list[tuple[str, CacheEntry]]:
        """Live entries whose key starts with ``prefix`` (start-up only: off the event loop)."""
        return await asyncio.wrap_future(self._writer.submit(self._scan, prefix))

    async def close(self) -> None:
        for loop in list(self._batches):  # answers waiting for their batch: written now
            self._write_batch(loop)
        self._writer.shutdown(wait=True)
        await asyncio.sleep(0)  # (their puts resolved)
        self._wconn.close()
        self._rconn.close()


class RedisCacheStore:
    """``SET key value PX ttl`` on a Redis server (expiry is Redis's job)."""

    def __init__(self, url: str, *, prefix: str = "thrifty:cache:") -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(url)
        self.prefix = prefix

    async def get(self, key: str) -> CacheEntry | None:
        raw = await self.client.get(self.prefix + key)
        return CacheEntry.loads(raw) if raw is not None else None

    async def put(self, key: str, entry: CacheEntry, ttl: float) -> None:
        await self.client.set(self.prefix + key, entry.dumps(), px=max(1, int(ttl * 1000)))

    async def scan(self, prefix: str) -> list[tuple[str, CacheEntry]]:
        out = []
        async for raw_key in self.client.scan_iter(
            match=_glob_escape(self.prefix + prefix) + "*", count=1000
        ):
            raw = await self.client.get(raw_key)
            if raw is not None:
                out.append((raw_key.decode()[len(self.prefix) :], CacheEntry.loads(raw)))
        return out

    async def close(self) -> None:
        await self.client.aclose()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class MemoryTier:
    """This process's most recently used entries of a store, at most ``max_bytes`` of answer
    bodies. An entry lives here no longer than it does in the store, and entries never change
    once stored, so what this tier serves is what the store would have served (a newer answer
    another process stores under the same key is seen once the one held here expires or is
    evicted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

    def get(self, key: str, now: float) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CacheEntry, now: float) -> None:
        size = len(entry.body)
        if entry.expires <= now or size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self.bytes -= len(self._entries.pop(key).body)

    def __len__(self) -> int:
        return len(self._entries)


class ExactCache:
    """Lookup and store for one gateway: scope + model namespace + normalized request, through
    a :class:`MemoryTier` of ``memory_bytes`` (0: every lookup reads the store)."""

    def __init__(self, store: CacheStore, *, memory_bytes: int = 0) -> None:
        self.store = store
        self.memory = MemoryTier(memory_bytes) if memory_bytes > 0 else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(scope: str, namespace: str, body: Mapping[str, Any]) -> str:
        return cache_key(scope, namespace, body)

    async def lookup(
        self, scope: str, namespace: str, body: Mapping[str, Any], accepted_models: Collection[str],
        *, key: str | None = None,
    ) -> CacheEntry | None:
        """The stored answer, if one exists for this tenant and was produced by a model the
        request accepts (``accepted_models``: the requested model, or the route's set).
        ``key``: :func:`cache_key` of the three, when the caller has it already."""
        if key is None:
            key = cache_key(scope, namespace, body)
        memory = self.memory
        entry = memory.get(key, time.time()) if memory is not None else None
        if entry is None:
            entry = await self.store.get(key)
            if entry is not None and memory is not None:
                memory.put(key, entry, time.time())
        if entry is None or entry.scope != scope or entry.model not in accepted_models:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    async def store_answer(
        self, scope: str, namespace: str, body: Mapping[str, Any], entry: CacheEntry, ttl: float,
        *, key: str | None = None,
    ) -> None:
        entry.scope = scope
        now = time.time()
        entry.expires = now + ttl
        if key is None:
            key = cache_key(scope, namespace, body)
        await self.store.put(key, entry, ttl)
        if self.memory is not None:  # once stored: the tier mirrors the store, never leads it
            self.memory.put(key, entry, now)

    async def close(self) -> None:
        await self.store.close()


def open_store(url: str | None, data_dir: str | Path) -> CacheStore:
    """``redis://...`` -> Redis; a path or ``sqlite:///path`` -> SQLite; None or ``"sqlite"``
    (the documented default, not a file named so) -> SQLite in the data dir."""
    if url == "sqlite":
        url = None
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCacheStore(url)
    if url and url.startswith("sqlite:///"):
        return SQLiteCacheStore(url[len("sqlite:///") :])
    if url:
        return SQLiteCacheStore(url)
    return SQLiteCacheStore(Path(data_dir) / "response_cache.sqlite3")
