"""This checkout (B) against another commit (A), CPU per request, alternating runs in one
invocation so that a noisy machine drifts on both alike:

    python -m benchmarks gateway --against <commit> [--rounds 5] [--requests 2000,3000]

A and B run as two gateway processes at once, both pinned to the target core (only one is
loaded at a time); wrk and the fake upstream share the other core. Each round runs every
scenario at 1 and at N connections on both, A first in odd rounds and B first in even ones,
each run starting once both gateways are idle; a run is a fixed number of requests
(wrk stops itself after that many responses). Scenarios: a fixed model, ``auto`` (every prompt
new), streaming; then, on a second pair of gateways with the response cache on, a cache hit
(one prompt, stored before) and a cache miss (every prompt new: lookup, upstream call, store).
Spend control is on throughout (an API key, a team budget, the SQLite ledger).

CPU per request: the gateway process's user+system CPU (all threads, from /proc) from before
the run until it is idle again after it, divided by the responses wrk counted. Requests wrk
abandons in flight when it stops (fewer than the connections) are in the numerator, not the
denominator: at most connections/requests too high, alike on both sides.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.checkout import Side, other_commit, this_checkout
from benchmarks.gateway import (
    ADMIN_KEY,
    CORES,
    LOADGEN_CPU,
    PROMPT,
    PY,
    TARGET_CPU,
    Proc,
    cpu_seconds,
    ensure_wrk,
    free_port,
    thrifty_config,
    thrifty_key,
    wrk,
)

CACHE_CONFIG = '\n[cache]\n\n[cache.routes."bench-model"]\nmode = "exact"\n'
BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": PROMPT}],
    "max_tokens": 64,
}


@dataclass(frozen=True)
class Scenario:
    name: str
    body: dict
    vary: bool = False  # every request a prompt never seen before
    expect: tuple[str, str] | None = None  # (header, value it must contain) on a check request


PLAIN = (
    Scenario("fixed model", BODY),
    Scenario("auto", {**BODY, "model": "auto"}, vary=True),
    Scenario("streaming", {**BODY, "stream": True}),
)
CACHED = (
    Scenario("cache hit", BODY, expect=("x-thrifty-cache", "hit")),
    Scenario("cache miss", BODY, vary=True),
)


@dataclass
class Gateway:
    side: Side
    proc: Proc
    url: str
    auth: dict[str, str]


def settled_cpu(pid: int, quiet: float = 0.15, cap: float = 3.0) -> float:
    """The process's CPU seconds once it has used none for ``quiet`` seconds (or after ``cap``):
    work a run leaves behind (ledger writes, cache stores) counts towards that run."""
    deadline = time.monotonic() + cap
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now == last:
            break
        last = now
    return last


@contextmanager
def gateway(side: Side, tmp: Path, upstream: str, extra: str) -> Iterator[Gateway]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = thrifty_config(tmp, upstream, extra=extra)
    proc = Proc(
        [PY, "-m", "thrifty.cli", "serve", "--config", str(config), "--port", str(port)],
        TARGET_CPU,
        tmp / "thrifty.log",
        env={"THRIFTY_ADMIN_KEY": ADMIN_KEY, **side.env},
        cwd=side.root,
    )
    try:
        proc.wait_ready(base + "/healthz")
        gw = Gateway(side, proc, base, {"Authorization": f"Bearer {thrifty_key(base)}"})
        ready = httpx.get(base + "/readyz", timeout=10).json()
        if not ready.get("router"):
            print(f"WARNING: {side.label}: router off: {ready.get('router_error')}", flush=True)
        yield gw
    finally:
        proc.stop()


def check(gw: Gateway, sc: Scenario, tries: int = 30) -> None:
    """A request that must succeed before anything is measured and, if the scenario expects a
    header (a cache hit), be repeated until it carries it (the first one stores the answer, in
    the background)."""
    got = ""
    for _ in range(tries):
        r = httpx.post(gw.url + "/v1/chat/completions", json=sc.body, headers=gw.auth, timeout=30)
        r.raise_for_status()
        if not sc.expect:
            return
        header, want = sc.expect
        got = r.headers.get(header, "")
        if want in got:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{gw.side.label} {sc.name}: {header} is {got!r}, not {want!r}")


def cpu_per_request(
    gw: Gateway, sc: Scenario, conns: int, requests: int, tmp: Path, cap: float
) -> float:
    """ms of the gateway's CPU per response over one bounded wrk run."""
    before = settled_cpu(gw.proc.pid)
    load = wrk(
        gw.url + "/v1/chat/completions",
        sc.body,
        connections=conns,
        duration=cap,
        headers=gw.auth,
        target_pid=None,
        tmp=tmp,
        vary=sc.vary,
        stop_after=requests,
    )
    used = settled_cpu(gw.proc.pid) - before
    if load.errors or not load.requests:
        code = gw.proc.proc.poll()
        raise RuntimeError(
            f"{gw.side.label} {sc.name} c={conns}: {load.errors} errors in {load.requests} "
            f"requests; the gateway {'is running' if code is None else f'exited with {code}'} "
            f"(log: {gw.proc.logpath})"
        )
    return used / load.requests * 1000


def spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{min(values):.3f}-{max(values):.3f} (IQR {q[0]:.3f}-{q[2]:.3f})"


def measure(
    gws: tuple[Gateway, Gateway],
    scenarios: tuple[Scenario, ...],
    conns: tuple[int, ...],
    counts: dict[int, int],
    args: argparse.Namespace,
    tmp: Path,
) -> dict[tuple[str, int], tuple[list[float], list[float]]]:
    for gw in gws:
        for sc in scenarios:
            check(gw, sc)
            for c in conns:  # warm-up, unmeasured
                cpu_per_request(gw, sc, c, max(c, counts[c] // 4), tmp, args.cap)
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        (sc.name, c): ([], []) for sc in scenarios for c in conns
    }
    for r in range(args.rounds):
        for sc in scenarios:
            for c in conns:
                # A then B in odd rounds, B then A in even ones: whichever side runs second
                # (after the other's load, on the same core) is not always the same one.
                # Adjacent runs form a pair; each starts once the other gateway is idle too.
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    settled_cpu(gws[1 - i].proc.pid)
                    samples[sc.name, c][i].append(
                        cpu_per_request(gws[i], sc, c, counts[c], tmp, args.cap)
                    )
                a, b = samples[sc.name, c]
                print(
                    f"  round {r + 1}/{args.rounds} {sc.name:<12} c={c:<3} "
                    f"A {a[-1]:.3f} ms  B {b[-1]:.3f} ms  B/A {b[-1] / a[-1]:.2f}",
                    flush=True,
                )
    return samples


def report(
    sides: tuple[Side, Side],
    samples: dict[tuple[str, int], tuple[list[float], list[float]]],
    counts: dict[int, int],
    args: argparse.Namespace,
) -> None:
    a_side, b_side = sides
    print(
        f"\nCPU ms per request, {args.rounds} alternating runs each "
        f"({', '.join(f'c={c}: {n} requests' for c, n in counts.items())});"
        f"\nA = {a_side.label} ({a_side.root}), B = {b_side.label} (this checkout)"
    )
    head = (
        f"{'scenario':<13}{'conns':>6}  {'A median':>9}  {'A min-max (IQR)':<30}"
        f"{'B median':>9}  {'B min-max (IQR)':<30}{'B/A':>6}  {'paired B/A min-max':<18}"
    )
    print(head)
    print("-" * len(head))
    for (name, c), (a, b) in samples.items():
        ma, mb = statistics.median(a), statistics.median(b)
        pairs = [y / x for x, y in zip(a, b)]
        print(
            f"{name:<13}{c:>6}  {ma:>9.3f}  {spread(a):<30}{mb:>9.3f}  {spread(b):<30}"
            f"{mb / ma:>6.2f}  {min(pairs):.2f}-{max(pairs):.2f}"
        )
    print(
        "B/A: median B over median A (above 1: this checkout uses more CPU per request); "
        "paired: each round's B run over its A run (adjacent)."
    )


def run(args: argparse.Namespace) -> int:
    ensure_wrk()
    # a SIGTERM (timeout, a supervisor) unwinds like Ctrl-C, so the gateways are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    unknown = (args.only or set()) - {sc.name for sc in PLAIN + CACHED}
    if unknown:
        raise SystemExit(f"--only: no scenario {', '.join(sorted(unknown))}")
    counts = dict(zip((1, args.connections), args.requests))
    conns = tuple(counts)
    sides = (other_commit(args.against), this_checkout())
    tmp = Path(tempfile.mkdtemp(prefix="thrifty-ab-run-"))
    print(
        f"machine: {CORES} cores; wrk and the fake upstream on cpu {LOADGEN_CPU}, both gateways on "
        f"cpu {TARGET_CPU}; A = {sides[0].label}, B = {sides[1].label}; logs in {tmp}",
        flush=True,
    )
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    with ExitStack() as stack:
        fake = Proc(
            [PY, "-m", "thrifty.testing.fake_upstream", "--port", str(up_port)],
            LOADGEN_CPU,
            tmp / "fake.log",
        )
        stack.callback(fake.stop)
        fake.wait_ready(upstream + "/models")
        for phase, every, extra in (("plain", PLAIN, ""), ("cache", CACHED, CACHE_CONFIG)):
            scenarios = tuple(sc for sc in every if not args.only or sc.name in args.only)
            if not scenarios:
                continue
            with ExitStack() as pair:
                gws = tuple(
                    pair.enter_context(
                        gateway(s, tmp / f"{phase}-{k}", upstream, with_backend(extra, args, k))
                    )
                    for k, s in zip("AB", sides)
                )
                print(f"{phase}: both gateways up", flush=True)
                samples |= measure(gws, scenarios, conns, counts, args, tmp)  # type: ignore[arg-type]
    report(sides, samples, counts, args)
    return 0


def with_backend(extra: str, args: argparse.Namespace, side: str) -> str:
    """``extra`` with the ``[cache]`` backend of ``side`` ("A" or "B") under ``--cache-backend``:
    a Redis server's database 1 for A and 2 for B (emptied first), so neither side sees the
    other's answers. Without it (or without a ``[cache]`` section): ``extra`` unchanged, each
    side on its default SQLite store."""
    url = args.cache_backend
    if not url or "[cache]\n" not in extra:
        return extra
    import redis

    db_url = f"{url.rstrip('/')}/{'AB'.index(side) + 1}"
    redis.Redis.from_url(db_url).flushdb()
    return extra.replace("[cache]\n", f'[cache]\nbackend = "{db_url}"\n', 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--against",
        metavar="COMMIT",
        help="compare this checkout (B) with COMMIT (A), alternating runs (CPU per request only)",
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="with --against: runs per side (default 5)"
    )
    p.add_argument(
        "--requests",
        type=lambda s: tuple(int(n) for n in s.split(",")),
        default=(2000, 3000),
        help="with --against: requests per run at 1 and at --connections (default 2000,3000: "
        "CPU time is read in 10 ms ticks, so a run of 500 at 1 connection, ~0.15 s, moved in "
        "steps of ~7%%)",
    )
    p.add_argument(
        "--cache-backend",
        metavar="REDIS_URL",
        help="with --against: the cache scenarios on this Redis server (redis://host:port; "
        "A uses its database 1, B its database 2) instead of each side's SQLite file",
    )
    p.add_argument(
        "--only",
        type=lambda s: {name.strip().replace("-", " ") for name in s.split(",")},
        default=None,
        help="with --against: only these scenarios, e.g. fixed-model,cache-hit "
        f"(of: {', '.join(sc.name.replace(' ', '-') for sc in PLAIN + CACHED)})",
    )
    p.add_argument(
        "--cap", type=float, default=60.0, help="with --against: seconds a run may take at most"
    )
