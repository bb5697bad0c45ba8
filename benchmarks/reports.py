"""Report speed on a big ledger: ``python -m benchmarks reports [--rows N] [--keep DB]``.

Builds a SQLite spend database (spend control's own schema) with N ledger rows
(default 1,000,000) spread over the 30 days before now (today included: it is
read from the raw ledger, the closed days from the daily rollup), 40 keys in
8 teams, 11 models, with a budget per team. Then measures, each on its own:

* the first rollup build (a one-off, done by the first report on an existing ledger);
* the monthly report (totals, groups by team, traffic per model, leaderboard,
  daily series, budget burn-down) rendered as a rich table, with an up-to-date rollup;
* the same report read from the raw ledger only (``--no-rollup``), for comparison;
* a report after 1,000 more records land (the refresh a live gateway sees).

Rows are synthetic (the numbers are not the point; the row count is).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

MODELS = (("gpt-4-1106-preview", 10e-6, 30e-6), ("gpt-3.5-turbo-1106", 1e-6, 2e-6), ("claude-v2", 8e-6, 24e-6),
          ("claude-instant-v1", 0.8e-6, 2.4e-6), ("zero-one-ai/Yi-34B-Chat", 0.8e-6, 0.8e-6),
          ("mistralai/mixtral-8x7b-chat", 0.6e-6, 0.6e-6), ("mistralai/mistral-7b-chat", 0.2e-6, 0.2e-6),
          ("meta/llama-2-70b-chat", 0.9e-6, 0.9e-6), ("WizardLM/WizardLM-13B-V1.2", 0.3e-6, 0.3e-6),
          ("claude-v1", 8e-6, 24e-6), ("meta/code-llama-instruct-34b-chat", 0.776e-6, 0.776e-6))


def build(path: Path, rows: int, now: float, seed: int = 1) -> float:
    from thrifty.spend import admin_ops
    from thrifty.spend.db import Database
    from thrifty.spend.ledger import COLUMNS
    from thrifty.spend.schema import migrate

    t0 = time.perf_counter()
    db = Database(f"sqlite:///{path}")
    migrate(db)
    teams = [f"team-{i}" for i in range(8)]
    for t in teams:
        admin_ops.create_team(db, t)
    keys = []
    for i in range(40):
        rec, _secret = admin_ops.create_key(db, name=f"k{i}", team_id=teams[i % len(teams)])
        keys.append((rec["id"], f"user-{i}", rec["team_id"]))
    rng = random.Random(seed)
    start = now - 30 * 86_400
    insert = f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    chunk = []
    db.execute("BEGIN")
    for n in range(rows):
        ts = start + (now - start) * n / rows
        key_id, user_id, team_id = keys[rng.randrange(len(keys))]
        model, pin, pout = MODELS[min(int(rng.expovariate(0.5)), len(MODELS) - 1)]
        pt, ct = rng.randint(20, 2000), rng.randint(5, 800)
        cost = round((pt * pin + ct * pout) * 1e9)
        frontier = round((pt * 10e-6 + ct * 30e-6) * 1e9)
        tags = json.dumps(["prod"] if n % 3 else ["batch", "eval"])
        status = 200 if n % 97 else 502
        chunk.append((f"req-{n}", ts, key_id, user_id, team_id, tags, "chat", "auto", model, "replay", "auto",
                      pt, ct, pt // 10 if n % 5 == 0 else 0, 0, pin, pout, 0.0,
                      cost if status == 200 else 0, frontier if status == 200 else 0, 120.0, status, None, 0, 0,
                      int(n % 50 == 0), 0, None))
        if len(chunk) == 20_000:
            db.executemany(insert, chunk)
            chunk.clear()
    if chunk:
        db.executemany(insert, chunk)
    db.execute("COMMIT")
    db.close()
    db = Database(f"sqlite:///{path}")
    for t in teams:
        admin_ops.set_budget(db, "team", t, amount_usd=500, period="monthly")
    db.close()
    return time.perf_counter() - t0


def _render(db, f, use_rollup: bool) -> float:
    from rich.console import Console

    from thrifty.reports.query import build_report
    from thrifty.reports.render import print_report

    t0 = time.perf_counter()
    report = build_report(db, f, "team", use_rollup=use_rollup)
    print_report(report, Console(file=io.StringIO(), width=160))
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks reports")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", help="keep the database at this path (default: a temporary directory)")
    args = ap.parse_args(argv)

    from thrifty.reports.filters import Filters
    from thrifty.reports.rollup import refresh
    from thrifty.spend.db import Database

    now = time.time()
    with tempfile.TemporaryDirectory(prefix="thrifty-bench-reports-") as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "spend.db"
        if path.exists():
            path.unlink()
        built = build(path, args.rows, now)
        size = path.stat().st_size / 1e6
        print(f"ledger: {args.rows:,} rows over 30 days, {size:.0f} MB SQLite, built in {built:.1f} s")
        db = Database(f"sqlite:///{path}")
        f = Filters(since=now - 30 * 86_400, until=now + 1)
        first = refresh(db, now)
        print(f"first rollup build (one-off): {first['seconds']:.2f} s")
        warm = [_render(db, f, True) for _ in range(args.repeat)]
        print(f"monthly report, rollup: median {statistics.median(warm):.3f} s, max {max(warm):.3f} s "
              f"over {args.repeat} runs (limit 2 s)")
        raw = [_render(db, f, False) for _ in range(2)]
        print(f"monthly report, raw ledger only: median {statistics.median(raw):.3f} s")
        from thrifty.spend.ledger import COLUMNS

        insert = f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        rows = [(f"late-{i}", now - 5 * 86_400 + i, None, "u", "team-0", "[]", "chat", "auto", "claude-v2", "replay",
                 "auto", 10, 10, 0, 0, 0.0, 0.0, 0.0, 1000, 2000, 1.0, 200, None, 0, 0, 0, 0, None)
                for i in range(1000)]
        db.executemany(insert, rows)
        late = _render(db, f, True)
        print(f"monthly report after 1,000 late records in a closed day (recount of that day): {late:.3f} s")
        db.close()
    return 0 if max(warm) <= 2.0 else 1
