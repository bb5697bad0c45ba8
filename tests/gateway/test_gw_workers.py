"""``thrifty serve --workers 2`` as a real process: budgets hold across its workers under
concurrency (SQLite and PostgreSQL), both workers serve, and ``/metrics`` on either one counts
every worker's requests."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from prom_text import promtool_ok, samples, total, value

from thrifty.spend import admin_ops
from thrifty.spend.db import Database
from thrifty.spend.money import usd_to_nanos
from thrifty.spend.schema import migrate
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.loadtest import PRICE, Gateway, fire, write_config

BODY = {"model": "m-ok", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]}
BUDGET = "0.01"  # each answer costs $0.00003 (12 prompt + 9 completion tokens): 333 fit
REQUESTS = 1000  # ~500 per worker: either alone could spend the whole budget
CONCURRENCY = 200


@pytest.fixture
def fake():
    with FakeUpstream("ok") as f:
        yield f


def _key(db_url: str) -> str:
    db = Database(db_url)
    migrate(db)
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng")
    admin_ops.set_budget(db, "team", "eng", amount_usd=BUDGET, period="daily")
    db.close()
    return secret


@contextlib.contextmanager
def _two_workers(tmp_path: pathlib.Path, data: pathlib.Path, fake: FakeUpstream, db_url: str,
                 metrics_dir: pathlib.Path) -> Iterator[Gateway]:
    """``thrifty serve --workers 2`` on the fake's one model, both workers up."""
    config = write_config(tmp_path / "gw.toml", data_dir=data, upstreams={"ok": fake.base_url},
                          models={"m-ok": {"provider": "ok", **PRICE, "route": False}},
                          spend={"database_url": db_url})
    with Gateway(config, tmp_path / "gw.log", workers=2, env={"THRIFTY_METRICS_DIR": str(metrics_dir)}) as gw:
        _wait_workers(metrics_dir, 2)
        yield gw


def _wait_workers(metrics_dir: pathlib.Path, n: int) -> None:
    """Until each of the ``n`` workers has started (written its metrics file)."""
    deadline = time.monotonic() + 60
    while len(list(metrics_dir.glob("*.json"))) < n:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_never_overshoot_a_budget(tmp_path, fake, backend, request):
    data = tmp_path / "data"
    data.mkdir()
    db_url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{data / 'spend.db'}"
    secret = _key(db_url)
    metrics_dir = tmp_path / "metrics"
    with _two_workers(tmp_path, data, fake, db_url, metrics_dir) as gw:
        replies = asyncio.run(fire([gw.url], secret, REQUESTS, BODY, concurrency=CONCURRENCY))
        time.sleep(1.5)  # every worker has written its counts since
        text = httpx.get(gw.url + "/metrics", timeout=10).text
        per_worker = [orjson.loads(p.read_bytes()) for p in sorted(metrics_dir.glob("*.json"))]
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert ok and refused, (len(ok), len(refused))
    assert all(r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded" for r in refused)

    db = Database(db_url)
    served_nanos, served_rows = db.one("SELECT COALESCE(SUM(cost_nanos), 0), COUNT(*) FROM ledger WHERE status = 200")
    rows = db.one("SELECT COUNT(*) FROM ledger")[0]
    spent = db.one("SELECT COALESCE(SUM(spent_nanos), 0) FROM budget_spend")[0]
    held = db.one("SELECT COUNT(*) FROM reservations")[0]
    db.close()
    reported = sum(usd_to_nanos(r.headers["x-thrifty-cost-usd"]) for r in ok)
    # upstream served == ledger == budget counter <= budget; every request is in the ledger
    assert fake.hits == len(ok) == served_rows
    assert int(served_nanos) == reported == int(spent) <= usd_to_nanos(BUDGET)
    assert rows == REQUESTS and held == 0

    # Both workers served, and the scraped one reports the sum of both.
    assert len(per_worker) == 2
    counts = [sum(row[-1] for row in state["thrifty_requests_total"]) for state in per_worker]
    assert all(n > 0 for n in counts) and sum(counts) == REQUESTS, counts
    got = samples(text)
    assert total(got, "thrifty_requests_total") == REQUESTS
    assert value(got, "thrifty_requests_total", endpoint="chat.completions", model="m-ok", status="200") == len(ok)
    assert value(got, "thrifty_rejections_total", reason="budget") == len(refused)
    assert value(got, "thrifty_upstream_latency_seconds_count", model="m-ok") == len(ok)
    promtool_ok(text)


def test_workers_refuse_a_single_process_gateway_on_the_same_sqlite_file(tmp_path, fake):
    """Budgets held in one process's memory and budgets held in the file must not mix."""
    data = tmp_path / "data"
    config = write_config(tmp_path / "gw.toml", data_dir=data, upstreams={"ok": fake.base_url},
                          models={"m-ok": {"provider": "ok", **PRICE, "route": False}}, spend={})
    with Gateway(config, tmp_path / "a.log", workers=2), pytest.raises(RuntimeError, match="exited"):
        Gateway(config, tmp_path / "b.log")
    assert "thrifty serve --workers N" in (tmp_path / "b.log").read_text()


def test_a_worker_killed_under_load_is_replaced_and_its_completed_requests_are_billed(tmp_path, fake):
    """kill -9 of one worker mid-load: the supervisor starts another, which replays the dead
    worker's journal and releases its holds; the other worker serves on meanwhile."""
    import os
    import signal

    data = tmp_path / "data"
    data.mkdir()
    db_url = f"sqlite:///{data / 'spend.db'}"
    secret = _key(db_url)  # $0.01: room for ~330 answers, fewer than this load sends
    config = write_config(tmp_path / "gw.toml", data_dir=data, upstreams={"ok": fake.base_url},
                          models={"m-ok": {"provider": "ok", **PRICE, "route": False}},
                          spend={"database_url": db_url})
    metrics_dir = tmp_path / "metrics"
    seen: dict[str, int] = {}
    with Gateway(config, tmp_path / "gw.log", workers=2, env={"THRIFTY_METRICS_DIR": str(metrics_dir)}) as gw:
        _wait_workers(metrics_dir, 2)
        victim = int(min(metrics_dir.glob("*.json")).stem)

        async def load() -> None:
            async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=32)) as client:
                stop = asyncio.Event()

                async def one_client() -> None:
                    while not stop.is_set():
                        try:
                            r = await client.post(gw.url + "/v1/chat/completions", json=BODY,
                                                  headers={"authorization": f"Bearer {secret}"})
                        except httpx.HTTPError:
                            continue  # its connection was on the killed worker
                        if r.status_code == 200:
                            seen[r.headers["x-request-id"]] = usd_to_nanos(r.headers["x-thrifty-cost-usd"])

                tasks = [asyncio.create_task(one_client()) for _ in range(32)]
                await asyncio.sleep(0.5)
                os.kill(victim, signal.SIGKILL)
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*tasks)

        asyncio.run(load())
        _wait_workers(metrics_dir, 3)  # the replacement has started (and replayed the journal)
        assert httpx.get(gw.url + "/healthz").status_code == 200
    db = Database(db_url)
    ids = {row[0]: int(row[1]) for row in db.all("SELECT request_id, cost_nanos FROM ledger")}
    spent = int(db.one("SELECT COALESCE(SUM(spent_nanos), 0) FROM budget_spend")[0])
    total_cost = int(db.one("SELECT COALESCE(SUM(cost_nanos), 0) FROM ledger")[0])
    held = int(db.one("SELECT COUNT(*) FROM reservations")[0])
    db.close()
    assert seen and not set(seen) - set(ids), "completed requests missing from the ledger"
    assert all(ids[k] == v for k, v in seen.items())
    assert spent == total_cost <= usd_to_nanos(BUDGET)
    assert held == 0


def test_a_rate_limit_holds_across_workers(tmp_path, fake):
    data = tmp_path / "data"
    data.mkdir()
    db_url = f"sqlite:///{data / 'spend.db'}"
    db = Database(db_url)
    migrate(db)
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng", rpm=10)
    db.close()
    metrics_dir = tmp_path / "metrics"
    with _two_workers(tmp_path, data, fake, db_url, metrics_dir) as gw:
        replies = asyncio.run(fire([gw.url], secret, 80, BODY, concurrency=40))
        time.sleep(1.5)
        got = samples(httpx.get(gw.url + "/metrics", timeout=10).text)
        per_worker = [orjson.loads(p.read_bytes()) for p in metrics_dir.glob("*.json")]
    ok = [r for r in replies if r.status_code == 200]
    limited = [r for r in replies if r.status_code == 429]
    assert len(ok) == fake.hits == 10 and len(limited) == 70  # one limit of 10 a minute, not 10 per worker
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in limited)
    assert all(sum(row[-1] for row in s["thrifty_requests_total"]) > 0 for s in per_worker)
    assert value(got, "thrifty_rejections_total", reason="rate_limit") == 70


def test_every_worker_serves_a_changed_router(tmp_path):
    """A profile calibrated into the router directory while 2 workers run: each worker reloads
    it on its own (router_reload_s), so every request for it is served, by both workers."""
    import shutil
    import subprocess
    import sys

    from thrifty.config import default_document
    from thrifty.gateway.litellm_import import to_toml
    from thrifty.providers.replay_records import read_packaged
    from thrifty.router import default_router_path
    from thrifty.testing.loadtest import ADMIN_KEY

    router_dir = tmp_path / "router"
    shutil.copytree(default_router_path(), router_dir)
    doc = {"data_dir": str(tmp_path / "data"), "router_path": str(router_dir), "router_reload_s": 0.2,
           **default_document({})}
    config = tmp_path / "gw.toml"
    config.write_text(to_toml(doc))
    prompts = list(dict.fromkeys(r.prompt for r in read_packaged()))[:20]
    body = {"model": "live-profile", "messages": [{"role": "user", "content": prompts[0]}]}
    metrics_dir = tmp_path / "metrics"
    with Gateway(config, tmp_path / "gw.log", workers=2, env={"THRIFTY_METRICS_DIR": str(metrics_dir)}) as gw:
        _wait_workers(metrics_dir, 2)
        before = asyncio.run(fire([gw.url], ADMIN_KEY, 20, body, concurrency=20))
        assert {r.status_code for r in before} == {404}
        (tmp_path / "prompts.jsonl").write_text("".join(orjson.dumps({"id": i, "prompt": p}).decode() + "\n"
                                                        for i, p in enumerate(prompts)))
        done = subprocess.run(
            [sys.executable, "-m", "thrifty.cli", "router", "calibrate", "--router", str(router_dir),
             "--input", str(tmp_path / "prompts.jsonl"), "--name", "live-profile", "--share", "0.5"],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        time.sleep(1.5)  # > router_reload_s, and every worker has written its counts since
        served_before = [_served(p) for p in sorted(metrics_dir.glob("*.json"))]
        after = asyncio.run(fire([gw.url], ADMIN_KEY, 40, body, concurrency=40))
        time.sleep(1.5)
        served_after = [_served(p) for p in sorted(metrics_dir.glob("*.json"))]
    assert {r.status_code for r in after} == {200}
    assert served_before == [0, 0] and all(n > 0 for n in served_after) and sum(served_after) == 40


def _served(path: pathlib.Path) -> int:
    """A worker's answered chat completions, from its metrics file."""
    rows = orjson.loads(path.read_bytes())["thrifty_requests_total"]
    return sum(r[-1] for r in rows if r[0] == "chat.completions" and r[2] == "200")
