"""Compute multipliers: what each saves and what it risks, on the same data.

    python -m benchmarks multipliers [--data ../shared/data] [--only cache,semantic,affinity,cascade]

* ``cache``: the exact cache through the real stores (SQLite file, and Redis when
  scripts/test-services.sh runs it) on a multi-tenant trace of RouterBench prompts with
  Zipf popularity, priced at gpt-4-1106-preview's recorded cost per call; hit rate, saving,
  lookup latency; and what tenant isolation costs in hits against one shared cache.
* ``semantic``: the false-hit curve on the distinct questions of the data (every hit is
  false), the saving on surface variants of cached questions, lookup latency.
* ``affinity``: prefix-affinity routing vs round robin on a synthetic multi-tenant workload
  over a pool of deployments with an LRU prefix cache each.
* ``cascade``: cheap model first with an answer check vs routing alone vs always-frontier
  on recorded responses (GSM8K, RouterBench).

Every figure printed is measured in this run; the workload definitions are in
docs/multipliers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SECTIONS = ("cache", "semantic", "affinity", "cascade")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _redis_url() -> str | None:
    path = Path(__file__).resolve().parents[1] / ".thrifty" / "test-services" / "redis.url"
    url = os.environ.get("THRIFTY_REDIS_URL") or (path.read_text().strip() if path.exists() else None)
    if not url:
        return None
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception:
        return None
    return url


# -- exact cache -----------------------------------------------------------------------------


def zipf_trace(n_items: int, n_requests: int, tenants: int, s: float, seed: int) -> list[tuple[int, int]]:
    """(tenant, item) pairs: each tenant draws from its own random permutation of the items
    with Zipf(s) popularity, so tenants overlap in what they ask but not in how often."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** s
    weights /= weights.sum()
    perms = [rng.permutation(n_items) for _ in range(tenants)]
    who = rng.integers(0, tenants, n_requests)
    ranks = rng.choice(n_items, size=n_requests, p=weights)
    return [(int(t), int(perms[t][r])) for t, r in zip(who, ranks)]


def bench_cache(data, requests: int) -> None:
    from thrifty.multipliers.cache import CacheEntry, ExactCache, RedisCacheStore, SQLiteCacheStore, scope_of

    rb = [i for i, g in enumerate(data.groups) if g.startswith("routerbench")]
    j = data.models.index("gpt-4-1106-preview")
    items = [i for i in rb if not np.isnan(data.costs[i, j])]
    cost = [float(data.costs[i, j]) for i in items]
    tenants = 8
    trace = zipf_trace(len(items), requests, tenants, 1.0, seed=1)
    total = sum(cost[k] for _, k in trace)
    print(f"\n== exact cache: {requests} requests, {tenants} tenants, Zipf(1.0) over {len(items)} RouterBench "
          f"prompts, gpt-4-1106-preview recorded cost ${total:.2f} without cache")

    def simulate(shared: bool) -> tuple[int, float]:
        seen: set = set()
        hits, saved = 0, 0.0
        for t, k in trace:
            key = k if shared else (t, k)
            if key in seen:
                hits += 1
                saved += cost[k]
            else:
                seen.add(key)
        return hits, saved

    iso_hits, iso_saved = simulate(False)
    sh_hits, sh_saved = simulate(True)
    print(f"  per-tenant cache (shipped): hit rate {iso_hits / requests:.1%}, saving ${iso_saved:.2f} "
          f"({iso_saved / total:.1%} of spend)")
    print(f"  one shared cache (unsafe, for comparison): hit rate {sh_hits / requests:.1%}, saving "
          f"${sh_saved:.2f}; isolation costs {(sh_hits - iso_hits) / requests:.1%} of requests in hits")
    print("  false hits: 0 by construction (the key is the whole normalized request); risk: staleness "
          "within the TTL, and answers to non-deterministic requests frozen when a route opts in")

    stores: list[tuple[str, Callable[[], object]]] = []
    tmp = tempfile.TemporaryDirectory()
    stores.append(("sqlite", lambda: SQLiteCacheStore(Path(tmp.name) / "cache.sqlite3")))
    url = _redis_url()
    if url:
        stores.append(("redis", lambda: RedisCacheStore(url, prefix=f"thrifty:bench:{os.getpid()}:")))
    else:
        print("  redis: not running (scripts/test-services.sh starts it); skipped")

    async def replay(make) -> tuple[int, list[float], list[float]]:
        cache = ExactCache(make())
        look, put = [], []
        hits = 0
        for t, k in trace:
            scope = scope_of(f"team-{t}", None)
            body = {"model": "gpt-4-1106-preview", "temperature": 0,
                    "messages": [{"role": "user", "content": data.prompts[items[k]]}]}
            t0 = time.perf_counter()
            hit = await cache.lookup(scope, "gpt-4-1106-preview", body, ("gpt-4-1106-preview",))
            look.append(time.perf_counter() - t0)
            if hit is not None:
                hits += 1
                continue
            t0 = time.perf_counter()
            await cache.store_answer(scope, "gpt-4-1106-preview", body, CacheEntry(
                b'{"choices":[{"message":{"role":"assistant","content":"A"}}]}', "gpt-4-1106-preview",
                "openai", 100, 1, cost[k], time.time()), ttl=3600)
            put.append(time.perf_counter() - t0)
        await cache.close()
        return hits, look, put

    for name, make in stores:
        hits, look, put = asyncio.run(replay(make))
        print(f"  {name}: {hits} hits (simulation: {iso_hits}); lookup p50 {_pct(look, .5) * 1e6:.0f} us, "
              f"p99 {_pct(look, .99) * 1e6:.0f} us; store (awaited) p50 {_pct(put, .5) * 1e6:.0f} us")
    tmp.cleanup()


# -- semantic cache --------------------------------------------------------------------------

THRESHOLDS = (0.90, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999)


def _variants(text: str, rng: random.Random) -> dict[str, str]:
    """Surface variants a user might send for the same question."""
    words = text.split(" ")
    w = rng.randrange(len(words))
    typo = words[w]
    if len(typo) > 3:
        i = rng.randrange(len(typo) - 1)
        typo = typo[:i] + typo[i + 1] + typo[i] + typo[i + 2:]
    return {
        "lowercase": text.lower(),
        "extra whitespace": "  " + text.replace(" ", "  ", 3) + "\n",
        "trailing punctuation": text.rstrip(" ?.:") if text.rstrip()[-1:] in "?.:" else text + "?",
        "'Please answer: ' prefix": "Please answer: " + text,
        "one typo": " ".join(words[:w] + [typo] + words[w + 1:]),
    }


def bench_semantic(data, sample: int) -> None:
    from thrifty.multipliers.semantic import DEFAULT_THRESHOLD, best_match, fingerprint
    from thrifty.router.embed import default_embedder

    prompts = list(dict.fromkeys(p for p in data.prompts if p.strip()))
    emb = default_embedder(show_progress=False)
    t0 = time.perf_counter()
    X = emb.embed(prompts)
    prints = [fingerprint(p) for p in prompts]
    prep = time.perf_counter() - t0
    n = len(prompts)
    order = np.random.default_rng(2).permutation(n)
    pos = np.empty(n, dtype=int)
    pos[order] = np.arange(n)
    warm = np.zeros(n)
    seq = np.zeros(n)
    for start in range(0, n, 1024):
        rows = np.arange(start, min(n, start + 1024))
        block = X[rows] @ X.T
        block[np.arange(len(rows)), rows] = -2.0
        for r, i in enumerate(rows):
            warm[i] = best_match(block[r], prints, prints[i], 0.5)[1]
        block[pos[None, :] >= pos[rows][:, None]] = -2.0
        for r, i in enumerate(rows):
            seq[i] = best_match(block[r], prints, prints[i], 0.5)[1]
    print(f"\n== semantic cache: false hits on the {n} distinct questions of the data (every hit is false); "
          f"embed+fingerprint {prep:.1f} s")
    print("  similarity = min(cosine of static MiniLM embeddings, n-gram Jaccard), numbers must match")
    print("  warm: every other question cached (worst case); arrival: questions arrive in random order, "
          "each looked up against those before it (one tenant holding the whole data set)")
    print(f"  {'threshold':>9}  {'warm false hits':>16}  {'arrival false hits':>18}")
    for th in THRESHOLDS:
        w, s = int((warm >= th).sum()), int((seq >= th).sum())
        mark = "  <- default" if th == DEFAULT_THRESHOLD else ""
        print(f"  {th:>9}  {w:>6} ({w / n:6.3%})  {s:>8} ({s / n:6.3%}){mark}")

    # Saving: surface variants of cached questions (the cache holds all distinct questions).
    rng = random.Random(3)
    picks = rng.sample(range(n), min(sample, n))
    kinds: dict[str, list[float]] = {}
    wrong: dict[str, list[float]] = {}
    for i in picks:
        for kind, text in _variants(prompts[i], rng).items():
            if text == prompts[i]:
                continue
            sims = X @ emb.embed_one(text)
            j, score = best_match(sims, prints, fingerprint(text), 0.5)
            kinds.setdefault(kind, []).append(score if j == i else 0.0)
            wrong.setdefault(kind, []).append(score if j not in (i, -1) else 0.0)
    print(f"  saving: hit rate on surface variants of {len(picks)} cached questions (hits on the wrong "
          "question in brackets)")
    print("  " + f"{'variant':>26}" + "".join(f"{t:>10}" for t in (0.95, 0.97, 0.98, 0.99, 0.995)))
    for kind, scores in kinds.items():
        cells = "".join(f"{np.mean(np.array(scores) >= t):>5.0%} ({np.mean(np.array(wrong[kind]) >= t):.0%})"
                        .rjust(10) for t in (0.95, 0.97, 0.98, 0.99, 0.995))
        print(f"  {kind:>26}{cells}")

    # Latency of one lookup (embed + verify) in a bucket of 1,000 and 10,000 entries.
    for size in (1000, 2000, 10000):
        bucket, bp = X[:size], prints[:size]
        times = []
        for i in rng.sample(range(size, n), 500):
            t0 = time.perf_counter()
            best_match(bucket @ emb.embed_one(prompts[i]), bp, prompts[i], DEFAULT_THRESHOLD)
            times.append(time.perf_counter() - t0)
        print(f"  lookup in a bucket of {size}: p50 {_pct(times, .5) * 1e3:.2f} ms, p99 {_pct(times, .99) * 1e3:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks multipliers")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    ap.add_argument("--requests", type=int, default=20000, help="exact cache trace length")
    ap.add_argument("--sample", type=int, default=1000, help="semantic: questions to vary")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from thrifty.router import data as rdata

    root = Path(args.data)
    d = rdata.load([root / "routellm", root / "routerbench"])
    if "cache" in only:
        bench_cache(d, args.requests)
    if "semantic" in only:
        bench_semantic(d, args.sample)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
