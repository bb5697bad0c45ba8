"""The per-request view: GET /admin/requests and `thrifty requests list`, filtered, cursor-paged,
with no prompt text; bad filters get a 400 in the admin API's error format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from thrifty.spend import admin_app
from thrifty.spend.periods import iso
from thrifty.testing.server import running

ADMIN = {"authorization": "Bearer sk-thr-admin-test"}
T0 = 1_790_000_000.0


def fill(db, n: int = 120) -> None:
    rows = []
    for i in range(n):
        team = "red" if i % 3 == 0 else "blue"
        status = 429 if i % 10 == 0 else 200
        model = None if status == 429 else ("m-small" if i % 2 else "m-big")
        rows.append((f"req-{i:04d}", T0 + i, f"key-{team}", None, team, "[]", "chat.completions", "auto", model,
                     "openai" if model else None, "test", 10, 5, 0, 0, 1000 * i, 3000 * i, 12.5, status,
                     "budget_exceeded" if status == 429 else None))
    db.executemany(
        "INSERT INTO ledger (request_id, ts, key_id, user_id, team_id, tags, endpoint, requested_model,"
        " served_model, provider, route_reason, prompt_tokens, completion_tokens, cached_tokens,"
        " cache_write_tokens, cost_nanos, frontier_cost_nanos, latency_ms, status, error_type)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def test_admin_requests_filters_and_pages_with_a_cursor(control):
    fill(control.db)
    with running(admin_app(control), 0) as url:
        seen, cursor = [], None
        while True:
            params = {"team_id": "red", "limit": "7", **({"cursor": cursor} if cursor else {})}
            r = httpx.get(url + "/requests", params=params, headers=ADMIN)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["data"]) <= 7
            seen += page["data"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == 40 and all(x["team_id"] == "red" for x in seen)
        assert [x["ts"] for x in seen] == sorted((x["ts"] for x in seen), reverse=True)
        assert len({x["request_id"] for x in seen}) == 40
        assert not any("prompt" in k and k != "prompt_tokens" for k in seen[0])  # no prompt text
        refused = httpx.get(url + "/requests", params={"status": "429", "limit": "500"}, headers=ADMIN).json()
        assert len(refused["data"]) == 12 and all(x["served_model"] is None for x in refused["data"])
        window = httpx.get(url + "/requests", headers=ADMIN, params={
            "model": "m-small", "since": str(T0 + 10), "until": iso(T0 + 20)}).json()["data"]
        assert [x["request_id"] for x in window] == [f"req-{i:04d}" for i in (19, 17, 15, 13, 11)]
        assert window[0]["cost_usd"] == "0.000019000"  # exact decimal USD, as in the other admin routes
        for bad in ({"limit": "0"}, {"status": "ok"}, {"cursor": "garbage"}, {"colour": "red"},
                    {"since": "yesterday"}):
            r = httpx.get(url + "/requests", params=bad, headers=ADMIN)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(url + "/requests").status_code == 401
        assert "/requests" in httpx.get(url + "/openapi.json").json()["paths"]


def test_cli_requests_list_pages_and_prints_json(control, tmp_path):
    fill(control.db)
    env = {**os.environ, "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "thrifty.cli", "requests", "list", "--data-dir", str(tmp_path),
                               *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    first = cli("--team", "blue", "--status", "200", "--limit", "5")
    assert first.returncode == 0, first.stderr
    assert "key-blue" in first.stdout and "next page: --cursor " in first.stdout
    cursor = first.stdout.rsplit("--cursor ", 1)[1].split()[0]
    second = json.loads(cli("--team", "blue", "--status", "200", "--limit", "5", "--cursor", cursor,
                            "--format", "json").stdout)
    assert len(second["data"]) == 5 and all(r["team_id"] == "blue" for r in second["data"])
    assert second["data"][0]["ts"] < T0 + 120 - 5
    refused = cli("--status", "429", "--limit", "3")
    assert "(not served: budget_exceeded)" in refused.stdout
    assert cli("--limit", "0").returncode == 2


def test_requests_query_uses_an_index_on_every_filter(control):
    """On a big ledger a page must be an index scan, never a full table scan (the benchmark in
    benchmarks/requests_view.py measures the time on 1M rows)."""
    from thrifty.spend.requests import COLUMNS

    for where in ("team_id = 'x'", "key_id = 'x'", "served_model = 'x'", "status = 429", "ts >= 0"):
        plan = control.db.all(f"EXPLAIN QUERY PLAN SELECT {COLUMNS} FROM ledger WHERE {where}"
                              " ORDER BY ts DESC, request_id DESC LIMIT 51")
        text = " ".join(str(r[-1]) for r in plan)
        assert "USING INDEX" in text and "SCAN ledger" not in text.replace("USING INDEX", ""), (where, text)
    assert time.time() > T0
