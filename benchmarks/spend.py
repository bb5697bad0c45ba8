"""Spend-control benchmark: ledger write throughput and budgets under a big concurrent load.

    python -m benchmarks spend [--records 50000] [--requests 3000] [--concurrency 500]
    python benchmarks/spend.py ...          (the same, without the dispatcher)

1. On SQLite, and on PostgreSQL when the test cluster runs
   (scripts/test-services.sh): ``--records`` ledger records through
   ``DbSpendControl.settle`` (one unbuffered journal write; it never waits on
   the database), timed from the first settle to the last commit; then
   ``--cycles`` full request cycles (authenticate, admit, settle; 64
   concurrent, all against one team budget) with per-call p50/p99.
2. Budget load: ``--requests`` requests, ``--concurrency`` at a time, through
   real gateway processes on loopback (fake upstreams) under a team budget
   that allows about a third of them: one gateway on SQLite, then two gateways
   sharing PostgreSQL. Prints served/refused, the ledger total against the
   budget and against the sum of the costs the clients were told.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
import tempfile
import time
import uuid

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pg_base_url() -> str | None:
    url = os.environ.get("THRIFTY_TEST_PG_URL")
    path = ROOT / ".thrifty" / "test-services" / "postgres.url"
    if not url and path.exists():
        url = path.read_text().strip()
    if not url:
        return None
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception:  # noqa: BLE001 (a probe: any failure means no PostgreSQL to measure)
        return None
    return url


def _fresh_pg_db(base: str) -> tuple[str, str]:
    import psycopg

    name = "thrifty_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name, name


def _drop_pg_db(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _records(n: int) -> list:
    from thrifty.spend import LedgerRecord

    now = time.time()
    return [LedgerRecord(request_id=uuid.uuid4().hex, ts=now, key_id="key_bench", user_id=None, team_id="bench",
                         tags=(), endpoint="chat.completions", requested_model="auto", served_model="m",
                         provider="openai", route_reason="bench", prompt_tokens=12, completion_tokens=9,
                         cost_usd=0.00003) for _ in range(n)]


def ledger_throughput(db_url: str, work: pathlib.Path, records: int, cycles: int) -> dict:
    """Two measures: ledger writes alone (settle -> committed), then full request cycles on one budget."""
    from thrifty.catalog.model import ModelInfo
    from thrifty.spend import admin_ops
    from thrifty.spend.control import DbSpendControl

    spend = DbSpendControl(db_url, work / "journal", admin_key="sk-thr-admin-bench")
    admin_ops.create_team(spend.db, "bench")
    _rec, secret = admin_ops.create_key(spend.db, team_id="bench")
    admin_ops.set_budget(spend.db, "team", "bench", amount_usd=10**6, period="monthly")
    spend.reload()
    model = ModelInfo("m", "openai", input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    clock = time.perf_counter
    out: dict = {"records": records, "cycles": cycles}

    async def writes() -> None:
        recs = _records(records)
        settle_t = []
        start = clock()
        for rec in recs:
            t = clock()
            await spend.settle(None, rec)
            settle_t.append(clock() - t)
        submitted = clock()
        await asyncio.get_running_loop().run_in_executor(None, spend.flush, 300.0)
        done = clock()
        out.update(write_settle_us_p50=_pct(settle_t, 0.5) * 1e6, write_settle_us_p99=_pct(settle_t, 0.99) * 1e6,
                   journaled_per_s=records / (submitted - start), committed_per_s=records / (done - start))

    async def request_cycles(workers: int = 64) -> None:
        recs = iter(_records(cycles))
        auth_t: list[float] = []
        admit_t: list[float] = []
        settle_t: list[float] = []

        async def worker() -> None:
            for rec in recs:
                t = clock()
                p = await spend.authenticate("Bearer " + secret)
                auth_t.append(clock() - t)
                t = clock()
                hold = await spend.admit(p, model, prompt_tokens=12, max_cost_usd=0.0001)
                admit_t.append(clock() - t)
                t = clock()
                await spend.settle(hold, rec)
                settle_t.append(clock() - t)

        start = clock()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = clock() - start
        out.update(auth_us_p50=_pct(auth_t, 0.5) * 1e6, admit_us_p50=_pct(admit_t, 0.5) * 1e6,
                   admit_us_p99=_pct(admit_t, 0.99) * 1e6, settle_us_p50=_pct(settle_t, 0.5) * 1e6,
                   settle_us_p99=_pct(settle_t, 0.99) * 1e6, cycles_per_s=cycles / elapsed)

    asyncio.run(writes())
    asyncio.run(request_cycles())
    spend.flush()
    out["in_ledger"] = int(spend.db.one("SELECT COUNT(*) FROM ledger")[0])
    spent = spend.db.one("SELECT SUM(spent_nanos) FROM budget_spend")[0]
    out["budget_counter_ok"] = int(spent) == cycles * 30_000
    asyncio.run(spend.close())
    return out


def budget_load(db_urls: list[str], work: pathlib.Path, requests: int, concurrency: int) -> dict:
    from thrifty.spend import admin_ops
    from thrifty.spend.db import Database
    from thrifty.spend.money import nanos_to_usd, usd_to_nanos
    from thrifty.spend.schema import migrate
    from thrifty.testing.fake_upstream import FakeUpstream
    from thrifty.testing.loadtest import PRICE, Gateway, fire, write_config

    url = db_urls[0]
    db = Database(url)
    migrate(db)
    admin_ops.create_team(db, "load")
    _rec, secret = admin_ops.create_key(db, team_id="load")
    per_request = usd_to_nanos("0.00003")  # the fake upstream's 12 + 9 tokens at $1/M and $2/M
    budget_nanos = per_request * requests // 3
    admin_ops.set_budget(db, "team", "load", amount_usd=str(nanos_to_usd(budget_nanos)), period="daily")
    upstream = FakeUpstream("ok")
    upstream.start()
    gateways = []
    try:
        for i, gw_url in enumerate(db_urls if len(db_urls) > 1 else [url]):
            data_dir = work / f"gw{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            cfg = write_config(work / f"gw{i}.toml", data_dir=data_dir, upstreams={"up": upstream.base_url},
                               models={"m-ok": {"provider": "up", **PRICE, "route": False}},
                               spend={"database_url": gw_url})
            gateways.append(Gateway(cfg, work / f"gw{i}.log"))
        body = {"model": "m-ok", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]}
        t0 = time.perf_counter()
        responses = asyncio.run(fire([g.url for g in gateways], secret, requests, body, concurrency))
        elapsed = time.perf_counter() - t0
    finally:
        for g in gateways:
            g.stop()
        upstream.stop()
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    budget_errors = sum(1 for r in refused if r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded")
    reported = sum(usd_to_nanos(r.headers["x-thrifty-cost-usd"]) for r in ok)
    ledger, rows = db.one("SELECT COALESCE(SUM(cost_nanos), 0), COUNT(*) FROM ledger")
    db.close()
    return {
        "gateways": len(gateways), "requests": requests, "concurrency": concurrency, "served": len(ok),
        "refused": len(refused), "refused_with_budget_error": budget_errors,
        "budget_usd": nanos_to_usd(budget_nanos), "ledger_usd": nanos_to_usd(int(ledger)), "ledger_rows": int(rows),
        "reported_usd": nanos_to_usd(reported), "ledger_within_budget": int(ledger) <= budget_nanos,
        "ledger_equals_reported": int(ledger) == reported, "req_per_s": requests / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks spend", description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000, help="ledger records per database (default 50000)")
    ap.add_argument("--cycles", type=int, default=5_000, help="admit/settle cycles per database (default 5000)")
    ap.add_argument("--requests", type=int, default=3000, help="requests in the budget load (default 3000)")
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--no-gateway", action="store_true", help="skip the load through gateway processes")
    args = ap.parse_args(argv)

    pg = _pg_base_url()
    with tempfile.TemporaryDirectory(prefix="thrifty-bench-spend-") as tmp:
        work = pathlib.Path(tmp)
        print(f"ledger writes ({args.records} settled records) and request cycles ({args.cycles} x authenticate, "
              "admit, settle; 64 concurrent, all on one team budget):")
        targets = [("sqlite", f"sqlite:///{work / 'sqlite' / 'spend.db'}", None)]
        if pg:
            targets.append(("postgresql", *_fresh_pg_db(pg)))
        else:
            print("  (PostgreSQL not running: run scripts/test-services.sh to include it)")
        for name, url, pg_name in targets:
            sub = work / f"ledger-{name}"
            sub.mkdir()
            try:
                r = ledger_throughput(url, sub, args.records, args.cycles)
            finally:
                if pg_name:
                    _drop_pg_db(pg, pg_name)
            print(f"  {name:10s} ledger: {r['committed_per_s']:8.0f} records/s committed (first settle to last "
                  f"commit); settle returns in {r['write_settle_us_p50']:.1f} us p50 / "
                  f"{r['write_settle_us_p99']:.1f} us p99 ({r['journaled_per_s']:.0f}/s journaled)")
            print(f"  {'':10s} cycles: {r['cycles_per_s']:8.0f} requests/s; authenticate {r['auth_us_p50']:.1f} us, "
                  f"admit p50 {r['admit_us_p50']:.1f} us / p99 {r['admit_us_p99']:.1f} us, settle p50 "
                  f"{r['settle_us_p50']:.1f} us / p99 {r['settle_us_p99']:.1f} us; "
                  f"{r['in_ledger']}/{r['records'] + r['cycles']} in the ledger, budget counter exact: "
                  f"{r['budget_counter_ok']}")
        if args.no_gateway:
            return 0
        runs = [("one gateway, SQLite", [f"sqlite:///{work / 'load-sqlite' / 'spend.db'}"])]
        if pg:
            url, pg_name = _fresh_pg_db(pg)
            runs.append(("two gateways sharing PostgreSQL", [url, url]))
        print(f"budget load ({args.requests} requests, {args.concurrency} concurrent, budget for about a third):")
        for label, urls in runs:
            sub = work / label.replace(" ", "-").replace(",", "")
            sub.mkdir()
            try:
                r = budget_load(urls, sub, args.requests, args.concurrency)
            finally:
                if "postgresql" in urls[0]:
                    _drop_pg_db(pg, pg_name)
            print(f"  {label}: {r['served']} served, {r['refused']} refused ({r['refused_with_budget_error']} with "
                  f"the budget error) at {r['req_per_s']:.0f} req/s")
            print(f"    budget ${r['budget_usd']}  ledger ${r['ledger_usd']} ({r['ledger_rows']} rows)  "
                  f"reported to clients ${r['reported_usd']}  within budget: {r['ledger_within_budget']}  "
                  f"ledger == reported: {r['ledger_equals_reported']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
