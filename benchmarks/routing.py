"""CPU per routing decision of ``auto``, side by side with another commit.

    python -m benchmarks routing [--against c4ed83f] [--rounds 3] [--prompts 400]

Each measurement is a fresh process importing one checkout's ``thrifty`` (this one, or the
other commit's in a temporary git worktree), assembling the gateway from a config as ``thrifty
serve`` does, and timing ``Gateway.plan_chat`` for ``--prompts`` RouterBench prompts (the whole
planning stage: policy, capabilities, the routing decision, the budget bound) in process CPU
seconds. Runs alternate A, B, A, B ... and the medians and ranges are printed with the ratio.

Pools: ``known``, the 11 RouterBench models under their own names (the packaged router knows
them all: its own decision, on both commits); ``unseen``, the same models under names no
router knows (the commit before learning refuses ``auto`` there, so only this checkout is
timed), with 0, 2,000 and 20,000 labels learnt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import asyncio, json, sys, time
code, spec = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, code)
import numpy as np
from thrifty.gateway.assemble import create_app
try:
    from thrifty.config import build_config
    from thrifty.pipeline.schemas import ChatRequest
    from thrifty.spend.contract import OpenSpendControl
except ImportError:  # a checkout from before the layers commit (02dad91)
    from thrifty.gateway.config import build_config
    from thrifty.gateway.schemas import ChatRequest
    from thrifty.spend.api import OpenSpendControl

prompts = json.load(open(spec["prompts"]))
models = spec["models"]
doc = {"data_dir": spec["data_dir"], "providers": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
       "models": {n: {"provider": "up", "input_cost_per_token": a, "output_cost_per_token": b} for n, (a, b) in models.items()}}
if spec.get("router"):
    doc["router"] = spec["router"]
app = create_app(build_config(doc), spend=OpenSpendControl())
gw = app.gw
principal = asyncio.run(OpenSpendControl().authenticate(None))
labels = spec.get("labels", 0)
if labels:
    from thrifty.router.online import Label, context_of
    rng = np.random.default_rng(0)
    names = list(models)
    emb = gw.router.router.embedder
    ctx = [context_of(emb.embed_one(p)) for p in prompts]
    for i in range(labels):
        gw.router.learn("*", Label(f"r{i}", names[i % len(names)], float(rng.random() < 0.7), ctx[i % len(ctx)]))
reqs = [ChatRequest({"model": "auto", "max_tokens": 256, "messages": [{"role": "user", "content": p}]}) for p in prompts]
for r in reqs[:50]:
    gw.plan_chat(principal, r)
t0 = time.process_time()
for r in reqs:
    gw.plan_chat(principal, r)
print(json.dumps({"us_per_decision": (time.process_time() - t0) / len(reqs) * 1e6}))
"""


def measure(code: Path, spec: dict) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(code), json.dumps(spec)], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{code}: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_decision"])


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):7.1f} us  (range {min(xs):.1f}-{max(xs):.1f}, n={len(xs)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks routing")
    ap.add_argument("--against", default="c4ed83f", help="the other commit (default: the one before learning)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=400)
    args = ap.parse_args(argv)

    from benchmarks.pool import fit_prices, load_pool

    pool = load_pool()
    prices = fit_prices(pool)
    step = max(1, len(pool) // args.prompts)
    prompts = pool.prompts[::step][: args.prompts]
    with tempfile.TemporaryDirectory(prefix="thrifty-routing-") as tmp:
        work = Path(tmp)
        (work / "prompts.json").write_text(json.dumps(prompts))
        other = work / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), args.against],
                       check=True)
        try:
            known = {m: prices[m] for m in pool.models}
            unseen = {f"pool-m{i:02d}": prices[m] for i, m in enumerate(pool.models)}
            base = {"prompts": str(work / "prompts.json"), "data_dir": str(work / "data")}
            a, b = [], []
            for _ in range(args.rounds):  # alternating: the machine's noise hits both alike
                a.append(measure(other, {**base, "models": known}))
                b.append(measure(ROOT, {**base, "models": known}))
            print(f"auto on the known pool (packaged router's own decision), CPU per decision, {len(prompts)} prompts:")
            print(f"  {args.against:>10}: {summary(a)}")
            print(f"  {'this':>10}: {summary(b)}")
            print(f"  ratio this / {args.against}: {statistics.median(b) / statistics.median(a):.2f}")
            print("auto on an unseen pool (learned decisions, exploring), this checkout only:")
            for labels in (0, 2000, 20000):
                xs = [measure(ROOT, {**base, "models": unseen, "labels": labels}) for _ in range(args.rounds)]
                print(f"  {labels:>6} labels: {summary(xs)}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
