"""A gateway that dies while collecting a provider batch's results bills each line once, and its
budgets count exactly what the ledger holds.

``thrifty serve`` runs in its own process on the test's spend database (SQLite or PostgreSQL,
the batch store in it too) and journal; the test kills it with SIGKILL at a point it knows was
reached:

* ``collect-fetching``: the provider's batch is finished and the gateway asked for its output
  file, whose answer the fake provider holds (the results are neither stored nor billed);
* ``collect-stored``: the results were stored with their lines (done), which the test sees in
  the database; on PostgreSQL the test holds a lock on the ledger table, so the billing has not
  reached the database (on SQLite it may have, or only the journal, or not even that: each way
  must end the same).

A second process on the same files finishes the batch. Each line is billed once in the ledger,
the budget's spent amount (in the database *and* as the gateway counts it when admitting, which
its refusal message shows) is the sum of the ledger, and nothing is left held.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
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

from thrifty.spend.db import Database
from thrifty.testing.fake_upstream import FakeProtocol, FakeUpstream
from thrifty.testing.loadtest import Gateway

POINTS = ("collect-fetching", "collect-stored")


@contextlib.contextmanager
def output_held(monkeypatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """The fake provider holds (never answers) downloads of file contents until ``release`` is
    set; ``asked`` is set when one came. (The gateway downloads only the output file.)"""
    asked, release = threading.Event(), threading.Event()
    real = FakeProtocol._batch_api

    def holding(self, t, method, path, query, raw):
        if method == b"GET" and path.endswith(b"/content") and not release.is_set():
            asked.set()
            return
        real(self, t, method, path, query, raw)

    monkeypatch.setattr(FakeProtocol, "_batch_api", holding)
    yield asked, release
    release.set()


def _stored(db_url: str) -> bool:
    codes = _codes(db_url)
    return bool(codes) and all(code is not None for code in codes)


def _codes(db_url: str) -> list:
    db = Database(db_url)
    try:
        return [r[0] for r in db.all("SELECT status_code FROM batch_lines")]
    finally:
        db.close()


def _crash_collecting(tmp: Path, fake: FakeUpstream, db_url: str, point: str, monkeypatch) -> dict:
    (tmp / "front").mkdir(exist_ok=True)
    key, budget = team(db_url)
    config = serve_config(tmp, fake, db_url)
    lock = None
    with output_held(monkeypatch) as (asked, release):
        if point == "collect-stored":
            release.set()
            if db_url.startswith("postgresql"):
                # Billing cannot reach the ledger table (it is journaled, then waits here).
                lock = psycopg.connect(db_url)  # a transaction, held until the kill
                lock.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")
        first = Gateway(config, tmp / "gw1.log")
        try:
            client, batch = submit(first.url, key, jsonl(N, "m-batch"))
            if point == "collect-fetching":
                assert asked.wait(20), "the gateway never asked for the provider's output file"
            else:
                wait_for(lambda: _stored(db_url), "the results stored with their lines")
            first.kill()
        finally:
            first.stop()
            if lock is not None:
                lock.rollback()
                lock.close()
    assert first.proc.returncode == -9
    before = batch_lines(db_url)
    codes = _codes(db_url)
    if lock is not None:  # the kill came before the ledger had any of it
        assert ledger_rows(db_url, budget["id"])[0] == []
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
        "codes": codes,
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
        # The process died with the lines in the provider's batch, its results collected
        # (stored) or being fetched (not stored).
        assert all(upstream for _, _, upstream in r["before"]), r["before"]
        assert all((code is not None) == (point == "collect-stored") for code in r["codes"]), r["codes"]
        check_once(r, fake)
