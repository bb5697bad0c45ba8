"""Router benchmark: per-prompt scoring latency and training time on the shared data.

    python -m benchmarks router [--data ../shared/data]

Prints p50/p99 of ``Router.score`` on one prompt at a time (single thread,
the gateway's call), batch throughput, and the wall time of a cold and a warm
training run on all of the data (cold: embedding cache and distilled table
rebuilt in a fresh cache directory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks router")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--prompts", type=int, default=2000)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from thrifty.router import Router, data

    d = data.load([args.data])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["THRIFTY_CACHE_DIR"] = cache
        t0 = time.perf_counter()
        router = Router.train(d, show_progress=False)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        Router.train(d, show_progress=False)
        warm = time.perf_counter() - t0
        out = Path(cache) / "router"
        router.save(out)
        t0 = time.perf_counter()
        router = Router.load(out)
        load = time.perf_counter() - t0

    prompts = d.prompts[:: max(1, len(d.prompts) // args.prompts)][: args.prompts]
    for p in prompts[:50]:
        router.score(p)  # warm up
    times = []
    for p in prompts:
        t0 = time.perf_counter()
        router.score(p)
        times.append(time.perf_counter() - t0)
    times.sort()
    t0 = time.perf_counter()
    router.score_many(prompts)
    batch = time.perf_counter() - t0

    print(f"data: {len(d)} prompts, {len(d.models)} models; router: {router.meta['predictor']}")
    print(f"train on all data: cold {cold:.1f} s (distill + embed + fit), warm {warm:.1f} s (cached embeddings)")
    print(f"load router: {load * 1e3:.0f} ms")
    print(f"score one prompt ({len(prompts)} prompts, one at a time): p50 {statistics.median(times) * 1e3:.2f} ms, "
          f"p99 {times[int(0.99 * len(times))] * 1e3:.2f} ms, mean {statistics.fmean(times) * 1e3:.2f} ms")
    print(f"score in a batch: {len(prompts) / batch:.0f} prompts/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
