"""Batches live in the spend database, shared by replicas on one PostgreSQL database.

Two ``thrifty serve`` processes (replicas A and B, each with its own data directory and journal)
on a fresh PostgreSQL database, in front of the counting fake upstream:

* a batch created on A is visible on B (the batch, its input file and its content, the list);
* while A lives, B does not touch A's batch (A holds it under a lease it renews);
* A is killed (SIGKILL) with a line in flight (the fake holds that model call unanswered): B
  takes the batch over once A's lease ends and finishes it; every line is billed exactly once
  in the ledger, the lines A had billed are not sent again, and the only model call made twice
  is the one that died with A.

In process: the leases themselves (one holder at a time, taken over once expired, released).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import openai
from batch_setup import PRICE, completed, jsonl, submit
from provider_batch_setup import ledger_rows, team, wait_for

from thrifty.multipliers.batches import BatchStore, line_request_id
from thrifty.testing.fake_upstream import FakeUpstream, HitGate
from thrifty.testing.loadtest import Gateway, _toml_value

N = 6
ANSWERED = 2  # model calls the fake answers before it holds the next one (A dies with it)
LEASE = 1.0


def replica_config(data: Path, fake: FakeUpstream, db_url: str) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    model = {"provider": "up", "upstream_model": "m-up", "route": False, **PRICE}
    lines = [
        f"data_dir = {json.dumps(str(data))}",
        'frontier_model = "m-ok"',
        "",
        "[retry]",
        "attempts = 1",
        "",
        "[spend]",
        f"database_url = {json.dumps(db_url)}",
        "poll_interval_s = 0.1",
        "",
        "[batches]",
        "poll = 0.05",
        "concurrency = 1",  # one line at a time: one line in flight when A dies
        f"lease = {LEASE}",
        "",
        "[providers.up]",
        'type = "openai"',
        f"base_url = {json.dumps(fake.base_url)}",
        "",
        "[models.m-ok]",
        *(f"{k} = {_toml_value(v)}" for k, v in model.items()),
        "",
    ]
    path = data / "gateway.toml"
    path.write_text("\n".join(lines))
    return path


def test_replica_b_sees_and_finishes_the_batch_of_a_killed_replica_a(tmp_path, pg_url):
    key, budget = team(pg_url)
    content = jsonl(N, "m-ok")
    with FakeUpstream() as fake:
        gate = HitGate(fake.state, ANSWERED, "ok", "hang")
        fake.state.behaviour = gate
        a = Gateway(replica_config(tmp_path / "a", fake, pg_url), tmp_path / "a.log")
        b: Gateway | None = None
        try:
            _, batch = submit(a.url, key, content)
            # A answered ANSWERED lines (billed, in the shared ledger) and holds the next call.
            wait_for(lambda: fake.hits == ANSWERED + 1, "A's line in flight")
            wait_for(lambda: len(ledger_rows(pg_url, budget["id"])[0]) == ANSWERED, "A's billing")

            b = Gateway(replica_config(tmp_path / "b", fake, pg_url), tmp_path / "b.log")
            on_b = openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0)
            seen = on_b.batches.retrieve(batch.id)
            assert seen.status == "in_progress"
            assert seen.request_counts.total == N and seen.request_counts.completed == ANSWERED
            assert [x.id for x in on_b.batches.list()] == [batch.id]
            assert on_b.files.retrieve(batch.input_file_id).bytes == len(content)
            assert on_b.files.content(batch.input_file_id).content == content
            time.sleep(3 * LEASE)  # A lives and renews its lease: B leaves its batch alone
            assert fake.hits == ANSWERED + 1
            assert on_b.batches.retrieve(batch.id).request_counts.completed == ANSWERED

            a.kill()  # SIGKILL, the line in flight
            assert a.proc.returncode == -9
            gate.until = 1 << 30
            done = completed(on_b, on_b.batches.retrieve(batch.id), timeout=30)
            out = [json.loads(x) for x in on_b.files.content(done.output_file_id).text.splitlines()]
            wait_for(lambda: len(ledger_rows(pg_url, budget["id"])[0]) >= N, "the ledger records")
            time.sleep(0.3)  # a second (duplicate) billing would be in by now
            rows, spent = ledger_rows(pg_url, budget["id"])
        finally:
            if b is not None:
                b.stop()
            a.stop()
    rids = sorted(line_request_id(batch.id, i) for i in range(N))
    assert done.request_counts.completed == N and done.request_counts.failed == 0
    assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(N)]
    assert all(x["response"]["status_code"] == 200 for x in out)
    assert [r[0] for r in rows] == rids  # every line billed exactly once
    assert all(r[1] > 0 and r[3] == 200 for r in rows)
    assert spent == sum(r[1] for r in rows)  # the budget counts exactly the ledger
    # Each line's model call was made once, but the one that died unanswered with A (made again
    # by B): the lines A billed were not sent again.
    assert fake.hits == N + 1
    assert "Traceback" not in (tmp_path / "b.log").read_text()


def test_leases_one_holder_at_a_time_taken_over_once_expired(tmp_path, pg_url):
    async def run() -> None:
        one, two = BatchStore(pg_url), BatchStore(pg_url)
        try:
            assert one.shared and two.shared
            f = await one.create_file("team:t", "batch", "in.jsonl", jsonl(1))
            batch = await one.create_batch("team:t", {"team_id": "t"}, f["id"], "/v1/chat/completions", "24h")
            assert await one.claim("r1", 0.5) == [batch["id"]]
            assert await two.claim("r2", 0.5) == []  # held by r1
            assert await one.renew("r1", 0.5) == {batch["id"]}
            await asyncio.sleep(0.3)
            assert await two.claim("r2", 0.5) == []  # renewed: still r1's
            await asyncio.sleep(0.7)  # r1 stopped renewing: its lease ended
            assert await two.claim("r2", 0.5) == [batch["id"]]
            assert await one.renew("r1", 0.5) == set()  # r1 learns it lost it
            assert await one.claim("r1", 0.5) == []
            await two.release("r2")  # a clean shutdown: free at once
            assert await one.claim("r1", 0.5) == [batch["id"]]
            await one.finish_line(batch["id"], 0, 200, {"ok": True})
            await one.finalize(batch["id"])
            await two.finalize(batch["id"])  # once: the second finalize leaves it as it is
            assert (await two.get_batch("team:t", batch["id"]))["status"] == "completed"
            assert len([x for x in await two.list_files("team:t") if x["purpose"] == "batch_output"]) == 1
            assert await one.claim("r1", 0.5) == []  # finished: nobody holds it
        finally:
            await one.close()
            await two.close()

    asyncio.run(run())
