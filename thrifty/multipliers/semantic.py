"""Semantic cache: answer from a stored response when a new prompt means the same thing.

Only the *last user message* is matched by meaning; everything else in the request (the
model namespace, the system prompt and earlier turns, sampling parameters, tools) must be
identical, so it is part of the bucket's exact key, as is the tenant's scope: a tenant
only ever searches its own bucket. Within a bucket, the new prompt's embedding (the
router's distilled MiniLM static embedder, unit-norm) is compared with every stored one
by cosine similarity, and the few nearest are then *verified*: the distilled embedder is a
bag of words (``"A loved B"`` and ``"B loved A"`` embed alike), so the similarity of a pair is
``min(cosine, lexical)`` where ``lexical`` is the Jaccard overlap of word-and-symbol unigrams and
bigrams (order matters), and two prompts whose numbers differ never match. The best
candidate at or above ``threshold`` is a hit.

The threshold is the whole risk: a hit on a different question serves a wrong answer.
``DEFAULT_THRESHOLD`` was chosen on the distinct questions of the evaluation data, where
every hit is a false hit (``python -m benchmarks multipliers``; curve in docs/multipliers.md).

The index is in memory (a matrix per bucket, FIFO-bounded); the answers live in the exact
cache's store (SQLite or Redis) with the text they answer, so :meth:`SemanticCache.rebuild`
restores the index from the store at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from thrifty.multipliers.cache import IGNORED_FIELDS, CacheEntry, CacheStore

__all__ = ["DEFAULT_THRESHOLD", "SemanticCache", "SemanticHit", "split_request"]

# Chosen on the evaluation data's 15,465 distinct questions: see docs/multipliers.md.
DEFAULT_THRESHOLD = 0.99
CANDIDATES = 4  # nearest neighbours by cosine that get the lexical check
SEM_PREFIX = "sem\x1f"  # store keys of semantic entries

_TOKEN = re.compile(r"\w+|[^\w\s]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


Fingerprint = tuple[frozenset, tuple[str, ...]]


def fingerprint(text: str) -> Fingerprint:
    """(unigrams and bigrams of lower-cased word/symbol tokens, the numbers in order)."""
    tokens = _TOKEN.findall(text.lower())
    return frozenset(tokens).union(itertools.pairwise(tokens)), tuple(_NUMBER.findall(text))


_CHUNK = 1024  # rows per matrix-vector product: below OpenBLAS's threading threshold


def similarities(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``vectors @ query`` in chunks of ``_CHUNK`` rows: a larger product wakes BLAS threads,
    which on a busy 2-core machine costs milliseconds of tail latency on the event loop
    (measured: p99 9 ms for 2,000 rows in one product vs 0.1 ms chunked)."""
    if len(vectors) <= _CHUNK:
        return vectors @ query
    return np.concatenate([vectors[s : s + _CHUNK] @ query for s in range(0, len(vectors), _CHUNK)])


def best_match(
    sims: np.ndarray, prints: Sequence[Fingerprint], query: Fingerprint | str, threshold: float
) -> tuple[int, float]:
    """Verify the ``CANDIDATES`` nearest by cosine (``sims``): the best ``min(cosine, lexical)``
    at or above ``threshold`` as (index, similarity); index -1 when none passes. ``query`` may
    be the text: it is fingerprinted only if some candidate passes the cosine test (long
    prompts make fingerprints cost up to a millisecond)."""
    n = len(sims)
    k = min(CANDIDATES, n)
    if k == 0:
        return -1, 0.0
    top = np.argpartition(-sims, k - 1)[:k] if n > k else range(n)
    best_i, best_s = -1, 0.0
    for i in top:
        cos = float(sims[i])
        if cos < threshold or cos <= best_s:
            continue
        if isinstance(query, str):
            query = fingerprint(query)
        score = min(cos, lexical_similarity(query, prints[i]))
        if score >= threshold and score > best_s:
            best_i, best_s = int(i), score
    return best_i, best_s


def lexical_similarity(a: Fingerprint, b: Fingerprint) -> float:
    """Jaccard overlap of the n-gram sets; 0 when the numbers differ."""
    if a[1] != b[1]:
        return 0.0
    union = len(a[0] | b[0])
    return len(a[0] & b[0]) / union if union else 1.0


def split_request(body: Mapping[str, Any]) -> tuple[bytes, str]:
    """(everything that must match exactly, the last user message's text)."""
    messages = list(body.get("messages") or ())
    last = None
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "user":
            last = i
            break
    text = ""
    if last is not None:
        content = messages[last].get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        messages[last] = {**messages[last], "content": None}
    rest = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and k != "messages"}
    rest["messages"] = messages
    return orjson.dumps(rest, option=orjson.OPT_SORT_KEYS), text


@dataclass(slots=True)
class SemanticHit:
    entry: CacheEntry
    similarity: float


class _Bucket:
    """Unit vectors of one (tenant, model namespace, request shape), with the keys of their answers."""

    __slots__ = ("keys", "prints", "size", "vectors")

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((16, dim), dtype=np.float32)
        self.keys: list[str] = []
        self.prints: list[Fingerprint] = []
        self.size = 0

    def add(self, vector: np.ndarray, key: str, prints: Fingerprint, limit: int) -> None:
        if key in self.keys:  # the same text again: refresh in place
            self.prints[self.keys.index(key)] = prints
            return
        if self.size == limit:  # FIFO: drop the oldest
            self.vectors[: self.size - 1] = self.vectors[1 : self.size]
            self.keys.pop(0)
            self.prints.pop(0)
            self.size -= 1
        if self.size == len(self.vectors):
            grown = np.zeros(
                (min(limit, 2 * len(self.vectors)), self.vectors.shape[1]), dtype=np.float32
            )
            grown[: self.size] = self.vectors[: self.size]
            self.vectors = grown
        self.vectors[self.size] = vector
        self.keys.append(key)
        self.prints.append(prints)
        self.size += 1

    def best(self, vector: np.ndarray, text: str, threshold: float) -> tuple[int, float]:
        return best_match(
            similarities(self.vectors[: self.size], vector), self.prints, text, threshold
        )


class SemanticCache:
    """In-memory nearest-neighbour index over a :class:`CacheStore` of answers."""

    def __init__(
        self,
        store: CacheStore,
        embed: Callable[[str], np.ndarray] | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_per_bucket: int = 2_000,
        max_buckets: int = 10_000,
    ) -> None:
        if embed is None:
            from thrifty.router.embed import default_embedder

            embed = default_embedder(show_progress=False).embed_one
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"semantic cache threshold must be within (0, 1], got {threshold}")
        self.store = store
        self.embed = embed
        self.threshold = threshold
        self.max_per_bucket = max_per_bucket
        self.max_buckets = max_buckets
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _bucket_id(scope: str, namespace: str, shape: bytes) -> str:
        return f"{scope}\x1f{namespace}\x1f{hashlib.blake2b(shape, digest_size=16).hexdigest()}"

    async def lookup(
        self, scope: str, namespace: str, body: Mapping[str, Any], accepted_models: Iterable[str]
    ) -> SemanticHit | None:
        shape, text = split_request(body)
        bucket = self.buckets.get(self._bucket_id(scope, namespace, shape))
        if bucket is None or bucket.size == 0 or not text.strip():
            self.misses += 1
            return None
        i, sim = bucket.best(self.embed(text), text, self.threshold)
        if i < 0:
            self.misses += 1
            return None
        entry = await self.store.get(bucket.keys[i])
        if entry is None or entry.scope != scope or entry.model not in set(accepted_models):
            self.misses += 1
            return None
        self.hits += 1
        return SemanticHit(entry, sim)

    async def store_answer(
        self, scope: str, namespace: str, body: Mapping[str, Any], entry: CacheEntry, ttl: float
    ) -> None:
        shape, text = split_request(body)
        if not text.strip():
            return
        bid = self._bucket_id(scope, namespace, shape)
        key = SEM_PREFIX + bid + "\x1f" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        entry.scope = scope
        entry.query = text
        await self.store.put(key, entry, ttl)
        self._index(bid, key, text)

    def _index(self, bid: str, key: str, text: str) -> None:
        bucket = self.buckets.get(bid)
        if bucket is None:
            if len(self.buckets) >= self.max_buckets:
                self.buckets.popitem(last=False)
            vector = self.embed(text)
            bucket = self.buckets[bid] = _Bucket(len(vector))
        else:
            self.buckets.move_to_end(bid)
            vector = self.embed(text)
        bucket.add(vector, key, fingerprint(text), self.max_per_bucket)

    async def rebuild(self) -> int:
        """Index every live semantic entry of the store (oldest first); returns how many."""
        entries = sorted(await self.store.scan(SEM_PREFIX), key=lambda kv: kv[1].created)
        n = 0
        for key, entry in entries:
            if entry.query:
                self._index(key[len(SEM_PREFIX) :].rsplit("\x1f", 1)[0], key, entry.query)
                n += 1
                if n % 200 == 0:
                    await asyncio.sleep(
                        0
                    )  # ~50 ms of embedding at a time: requests go on meanwhile
        return n
