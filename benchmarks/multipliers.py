"""Compute multipliers: what each saves and what it risks, on the same data.

    python -m benchmarks multipliers [--data ../shared/data] [--only cache,semantic,affinity,cascade,batch]

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
* ``batch``: normal vs batch prices on the same calls, and the job store's own overhead.

Every figure printed is measured in this run; the workload definitions are in
docs/multipliers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SECTIONS = ("cache", "semantic", "affinity", "cascade", "batch")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _redis_url() -> str | None:
    path = Path(__file__).resolve().parents[1] / ".thrifty" / "test-services" / "redis.url"
    url = os.environ.get("THRIFTY_REDIS_URL") or (
        path.read_text().strip() if path.exists() else None
    )
    if not url:
        return None
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception:  # noqa: BLE001 (a probe: any failure means no Redis to measure)
        return None
    return url


# -- exact cache -----------------------------------------------------------------------------


def zipf_trace(
    n_items: int, n_requests: int, tenants: int, s: float, seed: int
) -> list[tuple[int, int]]:
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
    from thrifty.multipliers.cache import (
        CacheEntry,
        ExactCache,
        RedisCacheStore,
        SQLiteCacheStore,
        scope_of,
    )

    rb = [i for i, g in enumerate(data.groups) if g.startswith("routerbench")]
    j = data.models.index("gpt-4-1106-preview")
    items = [i for i in rb if not np.isnan(data.costs[i, j])]
    cost = [float(data.costs[i, j]) for i in items]
    tenants = 8
    trace = zipf_trace(len(items), requests, tenants, 1.0, seed=1)
    total = sum(cost[k] for _, k in trace)
    print(
        f"\n== exact cache: {requests} requests, {tenants} tenants, Zipf(1.0) over {len(items)} RouterBench "
        f"prompts, gpt-4-1106-preview recorded cost ${total:.2f} without cache"
    )

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
    print(
        f"  per-tenant cache (shipped): hit rate {iso_hits / requests:.1%}, saving ${iso_saved:.2f} "
        f"({iso_saved / total:.1%} of spend)"
    )
    print(
        f"  one shared cache (unsafe, for comparison): hit rate {sh_hits / requests:.1%}, saving "
        f"${sh_saved:.2f}; isolation costs {(sh_hits - iso_hits) / requests:.1%} of requests in hits"
    )
    sweep = []
    for exponent in (0.6, 0.8, 1.0, 1.2):
        t = zipf_trace(len(items), requests, tenants, exponent, seed=1)
        seen, hits = set(), 0
        for key in t:
            hits += key in seen
            seen.add(key)
        sweep.append(f"Zipf({exponent}) {hits / requests:.1%}")
    print("  per-tenant hit rate by how repetitive the traffic is: " + ", ".join(sweep))
    print(
        "  false hits: 0 by construction (the key is the whole normalized request); risk: staleness "
        "within the TTL, and answers to non-deterministic requests frozen when a route opts in"
    )

    stores: list[tuple[str, Callable[[], object]]] = []
    tmp = tempfile.TemporaryDirectory()
    stores.append(("sqlite", lambda: SQLiteCacheStore(Path(tmp.name) / "cache.sqlite3")))
    url = _redis_url()
    if url:
        stores.append(
            ("redis", lambda: RedisCacheStore(url, prefix=f"thrifty:bench:{os.getpid()}:"))
        )
    else:
        print("  redis: not running (scripts/test-services.sh starts it); skipped")

    async def replay(make) -> tuple[int, list[float], list[float]]:
        cache = ExactCache(make())
        look, put = [], []
        hits = 0
        for t, k in trace:
            scope = scope_of(f"team-{t}", None)
            body = {
                "model": "gpt-4-1106-preview",
                "temperature": 0,
                "messages": [{"role": "user", "content": data.prompts[items[k]]}],
            }
            t0 = time.perf_counter()
            hit = await cache.lookup(scope, "gpt-4-1106-preview", body, ("gpt-4-1106-preview",))
            look.append(time.perf_counter() - t0)
            if hit is not None:
                hits += 1
                continue
            t0 = time.perf_counter()
            await cache.store_answer(
                scope,
                "gpt-4-1106-preview",
                body,
                CacheEntry(
                    b'{"choices":[{"message":{"role":"assistant","content":"A"}}]}',
                    "gpt-4-1106-preview",
                    "openai",
                    100,
                    1,
                    cost[k],
                    time.time(),
                ),
                ttl=3600,
            )
            put.append(time.perf_counter() - t0)
        await cache.close()
        return hits, look, put

    for name, make in stores:
        hits, look, put = asyncio.run(replay(make))
        print(
            f"  {name}: {hits} hits (simulation: {iso_hits}); lookup p50 {_pct(look, 0.5) * 1e6:.0f} us, "
            f"p99 {_pct(look, 0.99) * 1e6:.0f} us; store (awaited) p50 {_pct(put, 0.5) * 1e6:.0f} us"
        )
    cache_stage_overhead(Path(tmp.name))
    tmp.cleanup()


def cache_stage_overhead(tmp: Path, n: int = 3000) -> None:
    """CPU the cache stage adds per chat request, in process: the whole app (parse, plan,
    bill) in front of a provider that answers at once, so only thrifty's own work is timed."""
    from dataclasses import replace

    from thrifty.config import build_config
    from thrifty.gateway.assemble import create_app
    from thrifty.multipliers.settings import BatchSettings, CacheSettings
    from thrifty.spend.contract import OpenSpendControl

    cfg = build_config(
        {
            "data_dir": str(tmp),
            "frontier_model": "m",
            "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9"}},
            "models": {
                "m": {"provider": "p", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
            },
            "batches": {"enabled": False},
        },
        env={},
    )
    answer = {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1},
    }

    class Instant:
        name = "p"

        async def start(self) -> None: ...

        async def close(self) -> None: ...

        async def chat(self, body, timeouts):
            return answer

    def body(i: int, temperature: float) -> bytes:
        return orjson.dumps(
            {
                "model": "m",
                "temperature": temperature,
                "messages": [{"role": "user", "content": f"question {i} " + "x" * 200}],
            }
        )

    async def call(app, raw: bytes) -> None:
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # no disconnect while the answer is made
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message):
            return None

        await app(
            {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []},
            receive,
            send,
        )

    async def timed(app, bodies: list[bytes]) -> list[float]:
        out = []
        for raw in bodies:
            t0 = time.perf_counter()
            await call(app, raw)
            out.append(time.perf_counter() - t0)
        return out

    async def run() -> dict[str, list[float]]:
        plain = create_app(cfg, spend=OpenSpendControl(), providers={"p": Instant()})
        cached = create_app(
            replace(
                cfg,
                cache=CacheSettings(backend=str(tmp / "overhead.sqlite3")),
                batches=BatchSettings(enabled=False),
            ),
            spend=OpenSpendControl(),
            providers={"p": Instant()},
        )
        await plain.startup()
        await cached.startup()
        res = {
            "no cache configured": await timed(plain, [body(i, 0) for i in range(n)]),
            "cache on, request not cacheable": await timed(
                cached, [body(i, 0.7) for i in range(n)]
            ),
            "cache miss (lookup + store)": await timed(cached, [body(i, 0) for i in range(n)]),
        }
        while cached.pending_stores:
            await asyncio.sleep(0.01)
        exact = cached.pipeline.cache.exact
        before = exact.hits
        res["cache hit (answer + ledger record)"] = await timed(
            cached, [body(i, 0) for i in range(n)]
        )
        assert exact.hits - before == n, "every request of the hit run must hit"
        await cached.shutdown()
        await plain.shutdown()
        return res

    print(
        "  per-request time of the whole app, by cache path (in process; 200-char prompt):"
    )
    for name, times in asyncio.run(run()).items():
        print(
            f"    {name:<46} p50 {_pct(times, 0.5) * 1e6:6.0f} us   p99 {_pct(times, 0.99) * 1e6:6.0f} us"
        )


# -- semantic cache --------------------------------------------------------------------------

THRESHOLDS = (0.90, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999)


def _variants(text: str, rng: random.Random) -> dict[str, str]:
    """Surface variants a user might send for the same question."""
    words = text.split(" ")
    w = rng.randrange(len(words))
    typo = words[w]
    if len(typo) > 3:
        i = rng.randrange(len(typo) - 1)
        typo = typo[:i] + typo[i + 1] + typo[i] + typo[i + 2 :]
    return {
        "lowercase": text.lower(),
        "extra whitespace": "  " + text.replace(" ", "  ", 3) + "\n",
        "trailing punctuation": text.rstrip(" ?.:") if text.rstrip()[-1:] in "?.:" else text + "?",
        "'Please answer: ' prefix": "Please answer: " + text,
        "one typo": " ".join(words[:w] + [typo] + words[w + 1 :]),
    }


def bench_semantic(data, sample: int) -> None:
    from thrifty.multipliers.semantic import (
        DEFAULT_THRESHOLD,
        best_match,
        fingerprint,
        similarities,
    )
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
    print(
        f"\n== semantic cache: false hits on the {n} distinct questions of the data (every hit is false); "
        f"embed+fingerprint {prep:.1f} s"
    )
    print(
        "  similarity = min(cosine of static MiniLM embeddings, n-gram Jaccard), numbers must match"
    )
    print(
        "  warm: every other question cached (worst case); arrival: questions arrive in random order, "
        "each looked up against those before it (one tenant holding the whole data set)"
    )
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
    print(
        f"  saving: hit rate on surface variants of {len(picks)} cached questions (hits on the wrong "
        "question in brackets)"
    )
    print("  " + f"{'variant':>26}" + "".join(f"{t:>10}" for t in (0.95, 0.97, 0.98, 0.99, 0.995)))
    for kind, scores in kinds.items():
        cells = "".join(
            f"{np.mean(np.array(scores) >= t):>5.0%} ({np.mean(np.array(wrong[kind]) >= t):.0%})".rjust(
                10
            )
            for t in (0.95, 0.97, 0.98, 0.99, 0.995)
        )
        print(f"  {kind:>26}{cells}")

    # Latency of one lookup (embed + verify) in a bucket of 1,000 and 10,000 entries.
    for size in (1000, 2000, 10000):
        bucket, bp = X[:size], prints[:size]
        times = []
        for i in rng.sample(range(size, n), 500):
            t0 = time.perf_counter()
            best_match(
                similarities(bucket, emb.embed_one(prompts[i])), bp, prompts[i], DEFAULT_THRESHOLD
            )
            times.append(time.perf_counter() - t0)
        print(
            f"  lookup in a bucket of {size}: p50 {_pct(times, 0.5) * 1e3:.2f} ms, p99 {_pct(times, 0.99) * 1e3:.2f} ms"
        )


# -- prefix affinity -------------------------------------------------------------------------

BLOCK = 16  # tokens per KV-cache block, as vLLM's default


class LRUPrefixCache:
    """A deployment's prefix cache: blocks of ``BLOCK`` tokens keyed by their whole prefix (a
    block is reusable only after the same preceding tokens), evicted least recently used."""

    def __init__(self, capacity_tokens: int) -> None:
        from collections import OrderedDict

        self.blocks: OrderedDict[tuple, None] = OrderedDict()
        self.capacity = max(1, capacity_tokens // BLOCK)

    def serve(self, blocks: list[tuple]) -> int:
        """Cached tokens for a prompt of ``blocks`` (longest cached prefix), then caches it all."""
        hit = 0
        for b in blocks:
            if b in self.blocks:
                hit += 1
            else:
                break
        for b in blocks:
            if b in self.blocks:
                self.blocks.move_to_end(b)
            else:
                self.blocks[b] = None
                if len(self.blocks) > self.capacity:
                    self.blocks.popitem(last=False)
        return hit * BLOCK


def affinity_workload(
    tenants: int, requests: int, seed: int
) -> list[tuple[int, str, list[tuple], int, float]]:
    """(tenant, key text, prompt blocks, prompt tokens, arrival s). Each tenant has a shared
    prefix (system prompt + documents) of 1,000-8,000 tokens; each request adds a unique
    question of 50-400 tokens; tenants are picked with Zipf(0.8) popularity; Poisson arrivals."""
    rng = np.random.default_rng(seed)
    prefix_len = rng.integers(1000 // BLOCK, 8000 // BLOCK + 1, tenants)
    popularity = 1.0 / np.arange(1, tenants + 1) ** 0.8
    popularity /= popularity.sum()
    out = []
    t = 0.0
    for r in range(requests):
        k = int(rng.choice(tenants, p=popularity))
        suffix = int(rng.integers(50 // BLOCK + 1, 400 // BLOCK + 1))
        blocks = [("t", k, b) for b in range(int(prefix_len[k]))] + [
            ("r", r, b) for b in range(suffix)
        ]
        t += float(rng.exponential(1.0 / 20.0))  # 20 requests/s
        out.append((k, f"tenant {k} system prompt and documents", blocks, len(blocks) * BLOCK, t))
    return out


def simulate_affinity(policy, workload, caches: dict[str, LRUPrefixCache]) -> dict[str, float]:
    """Replay ``workload`` through ``policy``; a request holds its deployment for its prefill
    time (uncached tokens at 10,000 tokens/s) plus 2 s of decoding, so bounded load sees a
    realistic number in flight."""
    import heapq

    done: list[tuple[float, str]] = []
    prompt = cached = 0
    per: dict[str, int] = {n: 0 for n in caches}
    prefill_s: list[float] = []
    for _, text, blocks, tokens, t in workload:
        while done and done[0][0] <= t:
            policy.release(heapq.heappop(done)[1])
        name = policy.order(policy.key(text))[0]
        hit = caches[name].serve(blocks)
        prompt += tokens
        cached += hit
        per[name] += 1
        fill = (tokens - hit) / 10_000
        prefill_s.append(fill)
        policy.acquire(name)
        heapq.heappush(done, (t + fill + 2.0, name))
    loads = list(per.values())
    return {
        "hit": cached / prompt,
        "uncached": prompt - cached,
        "prompt": prompt,
        "max_share": max(loads) / (sum(loads) / len(loads)),
        "prefill_p50": _pct(prefill_s, 0.5),
        "prefill_p95": _pct(prefill_s, 0.95),
    }


def bench_affinity(requests: int) -> None:
    from thrifty.multipliers.affinity import PrefixAffinity, RoundRobin

    deployments = [f"vllm-{i}" for i in range(4)]
    tenants = 40
    workload = affinity_workload(tenants, requests, seed=4)
    price_in, price_cached = (
        0.50e-6,
        0.05e-6,
    )  # USD/token, a hosted open model with a 90% cache discount
    print(
        f"\n== prefix affinity: {requests} requests from {tenants} tenants (shared prefixes of 1k-8k tokens, "
        f"Zipf(0.8) popularity, 20 req/s) over {len(deployments)} deployments with an LRU prefix cache each"
    )
    print(
        f"  {'cache/deployment':>16}  {'policy':<30} {'hit rate':>8} {'prefill tokens':>14} {'cost':>8} "
        f"{'max/mean load':>13} {'prefill p50/p95 s':>18}"
    )
    for capacity in (32_000, 64_000, 128_000, 512_000):
        policies = [
            ("round robin", RoundRobin(deployments)),
            ("consistent hash, unbounded", PrefixAffinity(deployments, load_factor=1e9)),
            ("prefix affinity (bounded 1.25)", PrefixAffinity(deployments)),
        ]
        for name, policy in policies:
            r = simulate_affinity(
                policy, workload, {d: LRUPrefixCache(capacity) for d in deployments}
            )
            cost = r["uncached"] * price_in + (r["prompt"] - r["uncached"]) * price_cached
            print(
                f"  {capacity:>16,}  {name:<30} {r['hit']:>8.1%} {r['uncached']:>14,} ${cost:>7.2f} "
                f"{r['max_share']:>13.2f} {r['prefill_p50']:>8.3f}/{r['prefill_p95']:.3f}"
            )


# -- cascade ---------------------------------------------------------------------------------


def _cross_fitted_scores(d, seed: int = 5) -> np.ndarray:
    """P(good answer) per prompt and model from routers that never saw the prompt (2 folds,
    each trained with ``Router.train`` on the other half)."""
    from thrifty.router import Router

    rng = np.random.default_rng(seed)
    fold = rng.integers(0, 2, len(d))
    scores = np.zeros((len(d), len(d.models)))
    for k in (0, 1):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        router = Router.train(d.subset(train), show_progress=False)
        cols = [router.models.index(m) for m in d.models]
        scores[test] = router.score_many([d.prompts[i] for i in test])[:, cols]
    return scores


def _response(raw: str | None) -> str:
    """RouterBench stores a response as a Python list literal; its last element is the answer
    (as thrifty.providers.replay_records reads it)."""
    if not raw:
        return ""
    if raw.startswith("["):
        import ast

        try:
            parts = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
        return str(parts[-1]) if isinstance(parts, list) and parts else str(parts)
    return raw


def _row(
    name: str, quality: float, cost: float, frontier_cost: float, n: int, note: str = ""
) -> str:
    return f"  {name:<52} {quality:>7.1%} ${cost / n * 1000:>8.3f} {cost / frontier_cost:>8.1%}  {note}"


def _matched_router(
    p_cheap: np.ndarray,
    ok_cheap: np.ndarray,
    ok_top: np.ndarray,
    c_cheap: np.ndarray,
    c_top: np.ndarray,
    escalate_share: float,
) -> tuple[float, float]:
    """Routing alone between the same two models, sending the same share of prompts to the
    frontier model: those with the lowest predicted cheap-model quality."""
    k = round(escalate_share * len(p_cheap))
    top = np.zeros(len(p_cheap), dtype=bool)
    top[np.argsort(p_cheap)[:k]] = True
    quality = np.where(top, ok_top, ok_cheap).mean()
    cost = np.where(top, c_top, c_cheap).sum()
    return float(quality), float(cost)


def _verifier_scores(
    prompts: list[str],
    answers: list[str],
    router_p: np.ndarray,
    passed: np.ndarray,
    correct: np.ndarray,
    seed: int = 5,
) -> np.ndarray:
    """P(cheap answer correct) from a learned verifier that sees the prompt *and* the answer:
    L2-regularised logistic regression on [prompt embedding, answer embedding, their product,
    router score, check passed, log answer length], cross-fitted in the same 2 folds as the
    router (each prompt scored by a verifier trained on the other half)."""
    from thrifty.router.embed import default_embedder

    emb = default_embedder(show_progress=False)
    P, A = emb.embed(prompts), emb.embed([a or " " for a in answers])
    X = np.hstack(
        [
            P,
            A,
            P * A,
            router_p[:, None],
            passed[:, None].astype(float),
            np.log1p([len(a) for a in answers])[:, None],
        ]
    ).astype(np.float64)
    X = (X - X.mean(0)) / (X.std(0) + 1e-9)
    X = np.hstack([X, np.ones((len(X), 1))])
    y = correct.astype(float)
    fold = np.random.default_rng(seed).integers(0, 2, len(X))
    out = np.zeros(len(X))
    for k in (0, 1):
        tr, te = fold != k, fold == k
        w = np.zeros(X.shape[1])
        for _ in range(300):  # gradient descent; small and convex
            p = 1 / (1 + np.exp(-X[tr] @ w))
            w -= 0.5 * (X[tr].T @ (p - y[tr]) / tr.sum() + 1e-2 * w)
        out[te] = 1 / (1 + np.exp(-X[te] @ w))
    return out


def _matched_verifier(
    v: np.ndarray,
    ok_cheap: np.ndarray,
    ok_top: np.ndarray,
    c_cheap: np.ndarray,
    c_top: np.ndarray,
    escalate_share: float,
) -> tuple[float, float]:
    """Cascade with the learned verifier: escalate the given share with the lowest verifier score
    (the cheap answer is always paid for)."""
    k = round(escalate_share * len(v))
    esc = np.zeros(len(v), dtype=bool)
    esc[np.argsort(v)[:k]] = True
    return float(np.where(esc, ok_top, ok_cheap).mean()), float(c_cheap.sum() + c_top[esc].sum())


def bench_cascade(root: Path) -> None:
    from thrifty.multipliers.cascade import agree, check_answer, task_of
    from thrifty.providers.replay_records import REPLAY_PRICES, estimate_tokens
    from thrifty.router import data as rdata

    header = f"  {'policy':<52} {'quality':>7} {'$/1k req':>9} {'vs frontier':>8}"

    # GSM8K: Mixtral then gpt-4-1106-preview, one recorded response each.
    g = rdata.load([root / "routellm" / "gsm8k"])
    cheap, top = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
    jc, jt = g.models.index(cheap), g.models.index(top)
    keep = np.flatnonzero(~np.isnan(g.labels[:, jc]) & ~np.isnan(g.labels[:, jt]))
    n = len(keep)

    def cost_of(model: str, i: int) -> float:
        inp, out = REPLAY_PRICES[model]
        return (
            estimate_tokens(g.prompts[i]) * inp + estimate_tokens(g.responses[model][i] or "") * out
        )

    ok_c = g.labels[keep, jc] == 1
    ok_t = g.labels[keep, jt] == 1
    c_c = np.array([cost_of(cheap, i) for i in keep])
    c_t = np.array([cost_of(top, i) for i in keep])
    passed = np.array(
        [check_answer(g.prompts[i], g.responses[cheap][i] or "", "math") for i in keep]
    )
    t0 = time.perf_counter()
    scores = _cross_fitted_scores(g)[keep]
    fit_s = time.perf_counter() - t0
    frontier = c_t.sum()
    print(
        f"\n== cascade on GSM8K ({n} prompts, recorded responses of {cheap} and {top}; cost = chars/4 "
        "tokens at the replay prices)"
    )
    print(header)
    print(_row(f"always {top}", ok_t.mean(), frontier, frontier, n))
    print(_row(f"always {cheap}", ok_c.mean(), c_c.sum(), frontier, n))
    esc = ~passed
    q = np.where(passed, ok_c, ok_t).mean()
    cost = c_c.sum() + c_t[esc].sum()
    print(
        _row(
            "cascade, math check (final number + arithmetic)",
            q,
            cost,
            frontier,
            n,
            f"escalates {esc.mean():.1%}; check accepts {(~ok_c & passed).sum()} wrong, "
            f"rejects {(ok_c & ~passed).sum()} right",
        )
    )
    rq, rc = _matched_router(scores[:, jc], ok_c, ok_t, c_c, c_t, esc.mean())
    print(
        _row(
            "routing alone, same share to the frontier",
            rq,
            rc,
            frontier,
            n,
            f"2-fold cross-fitted router ({fit_s:.0f} s to train)",
        )
    )
    for share in (0.25, 0.5):
        rq, rc = _matched_router(scores[:, jc], ok_c, ok_t, c_c, c_t, share)
        print(_row(f"routing alone, {share:.0%} to the frontier", rq, rc, frontier, n))
    direct = scores[:, jc] < np.quantile(scores[:, jc], 0.25)  # router: straight to the frontier
    accept = ~direct & passed
    cost = c_c[~direct].sum() + c_t[~accept].sum()
    print(
        _row(
            "router first (lowest 25% -> frontier), then cascade",
            np.where(accept, ok_c, ok_t).mean(),
            cost,
            frontier,
            n,
            f"frontier for {(~accept).mean():.1%}",
        )
    )
    v = _verifier_scores(
        [g.prompts[i] for i in keep],
        [g.responses[cheap][i] or "" for i in keep],
        scores[:, jc],
        passed,
        ok_c,
    )
    for share in (esc.mean(), 0.25, 0.5):
        vq, vc = _matched_verifier(v, ok_c, ok_t, c_c, c_t, share)
        print(
            _row(
                f"cascade, learned verifier, {share:.0%} escalated",
                vq,
                vc,
                frontier,
                n,
                "cross-fitted logistic regression on prompt+answer" if share == esc.mean() else "",
            )
        )
    ideal = np.where(ok_c, ok_c, ok_t).mean()
    print(
        _row(
            "cascade with a perfect check (ceiling)",
            ideal,
            c_c.sum() + c_t[~ok_c].sum(),
            frontier,
            n,
        )
    )

    # RouterBench: two cheap models must agree, else gpt-4-1106-preview; real recorded costs.
    d = rdata.load([root / "routerbench"])
    c1, c2 = "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat"
    j1, j2, jt = d.models.index(c1), d.models.index(c2), d.models.index(top)
    complete = np.flatnonzero(~np.isnan(d.labels).any(axis=1) & ~np.isnan(d.costs).any(axis=1))
    t0 = time.perf_counter()
    scores = _cross_fitted_scores(d)[complete]
    fit_s = time.perf_counter() - t0
    L, C = d.labels[complete] == 1, d.costs[complete]
    n = len(complete)
    frontier = C[:, jt].sum()
    r1 = [_response(d.responses[c1][i]) for i in complete]
    r2 = [_response(d.responses[c2][i]) for i in complete]
    prompts = [d.prompts[i] for i in complete]
    print(
        f"\n== cascade on RouterBench ({n} prompts with all 11 models recorded; ARC, MBPP, Winogrande; "
        "recorded cost per call)"
    )
    print(header)
    print(_row(f"always {top}", L[:, jt].mean(), frontier, frontier, n))
    print(_row(f"always {c1}", L[:, j1].mean(), C[:, j1].sum(), frontier, n))
    fmt = np.array([check_answer(p, r) for p, r in zip(prompts, r1)])
    print(
        _row(
            f"cascade {c1.split('/')[-1]} -> gpt-4, format check",
            np.where(fmt, L[:, j1], L[:, jt]).mean(),
            C[:, j1].sum() + C[~fmt, jt].sum(),
            frontier,
            n,
            f"escalates {(~fmt).mean():.1%}; accepts {(~L[:, j1] & fmt).sum()} wrong",
        )
    )
    ag = np.array([agree(p, a, b) for p, a, b in zip(prompts, r1, r2)])
    print(
        _row(
            f"cascade {c1.split('/')[-1]} + {c2.split('/')[-1]} agree -> else gpt-4",
            np.where(ag, L[:, j1], L[:, jt]).mean(),
            C[:, j1].sum() + C[:, j2].sum() + C[~ag, jt].sum(),
            frontier,
            n,
            f"escalates {(~ag).mean():.1%} (MBPP always: code is not compared); accepts "
            f"{(~L[:, j1] & ag).sum()} wrong",
        )
    )
    code = np.array([t == "code" for t in map(task_of, prompts)])
    mix = np.where(code, fmt, ag)
    print(
        _row(
            "  same, but MBPP accepted on the code check",
            np.where(mix, L[:, j1], L[:, jt]).mean(),
            C[:, j1].sum() + C[~code, j2].sum() + C[~mix, jt].sum(),
            frontier,
            n,
            f"escalates {(~mix).mean():.1%}; accepts {(~L[:, j1] & mix).sum()} wrong",
        )
    )
    rq, rc = _matched_router(scores[:, j1], L[:, j1], L[:, jt], C[:, j1], C[:, jt], (~ag).mean())
    print(_row("routing alone mixtral/gpt-4, same share to gpt-4", rq, rc, frontier, n))
    v = _verifier_scores(prompts, r1, scores[:, j1], fmt, L[:, j1])
    for share in ((~ag).mean(), 0.15):
        vq, vc = _matched_verifier(v, L[:, j1], L[:, jt], C[:, j1], C[:, jt], share)
        rq, rc = _matched_router(scores[:, j1], L[:, j1], L[:, jt], C[:, j1], C[:, jt], share)
        print(
            _row(
                f"cascade mixtral -> gpt-4, learned verifier, {share:.0%} escalated",
                vq,
                vc,
                frontier,
                n,
                f"routing alone at the same share: {rq:.1%}",
            )
        )
    from thrifty.router.router import reference_costs

    ref = reference_costs(d)
    unit = np.array([ref[m] for m in d.models]) / max(ref.values())
    agree_cost = C[:, j1].sum() + C[:, j2].sum() + C[~ag, jt].sum()
    sweep = []
    for weight in np.concatenate([[0.0], np.geomspace(0.005, 1.0, 40)]):
        pick = np.argmax(scores - weight * unit[None, :], axis=1)
        sweep.append((weight, L[np.arange(n), pick].mean(), C[np.arange(n), pick].sum()))
    for label, target in (
        ("quality-first", None),
        ("at the agreement cascade's cost", agree_cost),
        ("at 25% of frontier cost", 0.25 * frontier),
        ("at 10% of frontier cost", 0.1 * frontier),
    ):
        w, q, c = sweep[0] if target is None else min(sweep, key=lambda r: abs(r[2] - target))
        print(
            _row(
                f"routing alone over 11 models, {label}",
                q,
                c,
                frontier,
                n,
                f"cost weight {w:.3g}; cross-fitted ({fit_s:.0f} s to train)"
                if target is None
                else f"cost weight {w:.3g}",
            )
        )
    best = np.where(L.any(axis=1), np.where(L, C, np.inf).min(axis=1), C.min(axis=1))
    print(_row("oracle (cheapest correct model)", L.any(axis=1).mean(), best.sum(), frontier, n))


# -- batch deferral --------------------------------------------------------------------------


def bench_batch(lines: int) -> None:
    from thrifty.catalog.loader import Catalog
    from thrifty.multipliers.batches import BatchRunner, BatchStore
    from thrifty.providers.replay_records import routerbench_records
    from thrifty.spend.pricing import cost_nanos

    recs = [r for r in routerbench_records() if r.model == "gpt-4-1106-preview"]
    catalog = Catalog.load(None)
    print(
        f"\n== batch deferral: {len(recs)} RouterBench calls (gpt-4-1106-preview's recorded prompt and answer "
        "token counts) priced with thrifty.spend.pricing, normal vs batch prices"
    )
    for name, provider in (
        ("gpt-4o", "openai"),
        ("gpt-4.1-mini", "openai"),
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini-2.5-flash", "gemini"),
    ):
        info = catalog.model(name, provider)
        sync = sum(cost_nanos(info, r.prompt_tokens, r.completion_tokens) for r in recs) / 1e9
        batch = sum(cost_nanos(info, r.prompt_tokens, r.completion_tokens, batch=True) for r in recs) / 1e9
        print(
            f"  {name:<20} normal ${sync:8.3f}   batch ${batch:8.3f}   saving {1 - batch / sync:.1%}"
        )
    print(
        "  the saving applies only to lines sent to a provider's batch API (batch_api = true); lines run "
        "synchronously are billed at normal prices"
    )

    async def run() -> tuple[float, float]:
        tmp = tempfile.TemporaryDirectory()
        store = BatchStore(Path(tmp.name) / "b.sqlite3")

        async def instant(fields, endpoint, body, request_id):
            return 200, {"choices": [{"message": {"content": "ok"}}]}

        content = b"".join(
            orjson.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "m", "messages": [{"role": "user", "content": "q"}]},
                }
            )
            + b"\n"
            for i in range(lines)
        )
        f = await store.create_file("anon", "batch", "in.jsonl", content)
        t0 = time.perf_counter()
        batch = await store.create_batch("anon", {}, f["id"], "/v1/chat/completions", "24h")
        create = time.perf_counter() - t0
        runner = BatchRunner(store, instant, concurrency=16, poll=0.01)
        t0 = time.perf_counter()
        await runner.run_batch(batch["id"])
        run_s = time.perf_counter() - t0
        await store.close()
        tmp.cleanup()
        return create, run_s

    create, run_s = asyncio.run(run())
    print(
        f"  thrifty's own overhead: validating and storing {lines} lines {create * 1e3:.0f} ms; running them "
        f"with an instant executor {run_s:.2f} s ({lines / run_s:,.0f} lines/s, one durable SQLite write per "
        "line); risk: the provider's completion window is up to 24 h (not measurable offline)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks multipliers")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS)
    )
    ap.add_argument("--requests", type=int, default=20000, help="exact cache trace length")
    ap.add_argument("--sample", type=int, default=1000, help="semantic: questions to vary")
    ap.add_argument("--affinity-requests", type=int, default=20000)
    ap.add_argument("--batch-lines", type=int, default=2000)
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
    if "affinity" in only:
        bench_affinity(args.affinity_requests)
    if "cascade" in only:
        bench_cascade(root)
    if "batch" in only:
        bench_batch(args.batch_lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
