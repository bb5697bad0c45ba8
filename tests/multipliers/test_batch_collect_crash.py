"""A gateway that dies while collecting a provider batch's results bills each line once, and its
budgets count exactly what the ledger holds.

``thrifty serve`` runs in its own process on the test's spend database (SQLite or PostgreSQL),
journal and batch store, with ``THRIFTY_TEST_CRASH_AT`` naming the point where it kills itself
with SIGKILL (no upstream call separates the points below, so the fake provider cannot hold the
process there the way ``test_batch_submit_crash`` does):

* ``collect-billed``: the provider's results were billed (ledger records journaled, holds
  settled in memory);
* ``collect-stored``: the results were stored with their lines (done) but not billed yet.

A second process on the same files finishes the batch. Each line is billed once in the ledger,
the budget's spent amount (in the database *and* as the gateway counts it when admitting, which
its refusal message shows) is the sum of the ledger, and nothing is left held.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from batch_setup import completed, jsonl, submit
from provider_batch_setup import (
    N,
    batch_lines,
    check_once,
    held_usd,
    ledger_rows,
    serve_config,
    team,
    wait_for,
)

from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.loadtest import Gateway

POINTS = ("collect-billed", "collect-stored")


def _crash_collecting(tmp: Path, fake: FakeUpstream, db_url: str, point: str, monkeypatch) -> dict:
    (tmp / "front").mkdir(exist_ok=True)
    key, budget = team(db_url)
    config = serve_config(tmp, fake, db_url)
    monkeypatch.setenv("THRIFTY_TEST_CRASH_AT", point)
    first = Gateway(config, tmp / "gw1.log")
    try:
        client, batch = submit(first.url, key, jsonl(N, "m-batch"))
        first.proc.wait(30)  # the provider finishes at once; the gateway dies collecting
    finally:
        first.stop()
    monkeypatch.delenv("THRIFTY_TEST_CRASH_AT")
    log1 = (tmp / "gw1.log").read_text()
    assert first.proc.returncode == -9, log1[-3000:]
    assert f"THRIFTY_TEST_CRASH_AT={point}: killing this process" in log1
    before = batch_lines(db_url)
    with Gateway(config, tmp / "gw2.log") as second:
        client = openai.OpenAI(base_url=second.url + "/v1", api_key=key, max_retries=0)
        done = completed(client, client.batches.retrieve(batch.id), timeout=30)
        out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        wait_for(lambda: len(ledger_rows(db_url, budget["id"])[0]) >= N, "the ledger records")
        time.sleep(0.3)  # a second (duplicate) billing would be in by now
        rows, spent = ledger_rows(db_url, budget["id"])
        held = held_usd(second.url, key, db_url, spent)  # also: the gateway counts `spent`
    return {
        "batch": batch.id,
        "before": before,
        "done": done,
        "out": out,
        "rows": rows,
        "spent": spent,
        "held": held,
        "log": (tmp / "gw2.log").read_text(),
    }


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_crash_while_collecting_bills_each_line_once(tmp_path, backend, point, request, monkeypatch):
    db_url = (
        f"sqlite:///{tmp_path / 'front' / 'spend.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    with FakeUpstream() as fake:
        r = _crash_collecting(tmp_path, fake, db_url, point, monkeypatch)
        # The process died with the lines in the provider's batch, its results collected.
        assert all(upstream for _, _, upstream in r["before"]), r["before"]
        check_once(r, fake)
