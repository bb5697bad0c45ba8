"""The ledger's journal and batcher: throughput-independent correctness, replay, alerts."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time

from thrifty.spend import admin_ops
from thrifty.spend.contract import BudgetExceeded
from thrifty.spend.control import DbSpendControl
from thrifty.spend.db import Database
from thrifty.spend.journal import Journal
from thrifty.spend.ledger import journal_entry, write_batch
from thrifty.spend.reclaim import replay_orphans
from thrifty.spend.schema import migrate

from .conftest import MODEL, record


def test_replay_is_idempotent_and_skips_a_torn_last_line(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'spend.db'}")
    migrate(db)
    journal = Journal(tmp_path / "journal")
    for i in range(5):
        journal.append(json.dumps(journal_entry(record(f"r{i}", cost=0.5), 500_000_000, [["bud", 0, 500_000_000]],
                                                None)).encode() + b"\n")
    journal.append(b'{"request_id": "torn", "ts"')  # the process died mid-write
    # two records already reached the database before the "crash"
    first = [json.loads(line) for line in journal.path.read_bytes().splitlines()[:2]]
    write_batch(db, first, {}, release_reservations=False)
    journal.close()  # releases the lock, as process death would
    assert replay_orphans(db, tmp_path / "journal", release_reservations=False) == 5
    assert db.one("SELECT COUNT(*), SUM(cost_nanos) FROM ledger") == (5, 2_500_000_000)
    assert db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = 'bud'") == (2_500_000_000,)
    assert not list((tmp_path / "journal").glob("*.journal"))
    db.close()


def test_an_entry_journaled_before_the_later_columns_still_replays(tmp_path):
    """A journal written by a version without scores and learned-routing columns (a crash just
    before an upgrade): its records are written with those columns' defaults."""
    db = Database(f"sqlite:///{tmp_path / 'spend.db'}")
    migrate(db)
    entry = journal_entry(record("old", cost=0.25), 250_000_000, [], None)
    for later in ("scores", "route_context", "route_propensity", "route_explored"):
        del entry[later]
    write_batch(db, [entry], {}, release_reservations=False)
    row = db.one("SELECT cost_nanos, scores, route_context, route_propensity, route_explored FROM ledger"
                 " WHERE request_id = 'old'")
    assert row == (250_000_000, None, None, None, 0)
    db.close()


def test_a_live_journal_is_not_replayed_by_another_process(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'spend.db'}")
    migrate(db)
    live = Journal(tmp_path / "journal")
    live.append(json.dumps(journal_entry(record("x"), 0, [], None)).encode() + b"\n")
    assert replay_orphans(db, tmp_path / "journal", release_reservations=False) == 0
    live.close()
    db.close()


def test_soft_threshold_fires_the_webhook_once(tmp_path):
    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spend = DbSpendControl(f"sqlite:///{tmp_path / 'spend.db'}", tmp_path / "journal", admin_key="sk-thr-admin-t")
    try:
        admin_ops.create_team(spend.db, "eng")
        _rec, secret = admin_ops.create_key(spend.db, team_id="eng")
        admin_ops.set_budget(spend.db, "team", "eng", amount_usd=1, period="monthly", soft_thresholds=[0.5, 0.8],
                         webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        spend.reload()

        async def go():
            p = await spend.authenticate(secret)
            for i in range(4):  # 0.3, 0.6, 0.9, 1.2 -> the 4th is refused
                try:
                    res = await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=0.3)
                except BudgetExceeded:
                    continue
                await spend.settle(res, record(cost=0.3))
                spend.flush()

        asyncio.run(go())
        deadline = time.time() + 5
        while len(received) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert sorted(a["threshold"] for a in received) == [0.5, 0.8]
        assert received[0]["scope_id"] == "eng" and received[0]["type"] == "budget.threshold"
    finally:
        asyncio.run(spend.close())
        server.shutdown()


def test_full_journals_rotate_and_are_deleted_once_committed(tmp_path):
    from thrifty.spend.ledger import LedgerWriter

    url = f"sqlite:///{tmp_path / 'spend.db'}"
    db = Database(url)
    migrate(db)
    writer = LedgerWriter(url, tmp_path / "journal", release_reservations=False, journal_bytes=4000)
    for i in range(200):
        writer.submit(journal_entry(record(f"r{i}", cost=0.001), 1_000_000, [["b", 0, 1_000_000]], None))
    writer.flush()
    deadline = time.time() + 5
    while len(list((tmp_path / "journal").glob("*.journal"))) > 1 and time.time() < deadline:
        time.sleep(0.05)
    assert len(list((tmp_path / "journal").glob("*.journal"))) == 1  # only the live one is left
    assert db.one("SELECT COUNT(*), SUM(cost_nanos) FROM ledger") == (200, 200_000_000)
    assert db.one("SELECT spent_nanos FROM budget_spend") == (200_000_000,)
    writer.close()
    assert not list((tmp_path / "journal").glob("*.journal"))
    assert db.one("SELECT COUNT(*) FROM journal_marks") == (0,)
    db.close()


def test_records_arriving_steadily_are_committed_in_a_batch_per_interval(tmp_path):
    """Group commit: a record submitted while a batch is written waits for the next interval
    instead of starting a batch of its own, and reaches the database without a flush. (Each
    batch here takes 20 ms, as an fsync on a slow disk may: writing again as soon as one ended
    made a batch of ~20 records every 20 ms.)"""
    from thrifty.spend.ledger import LedgerWriter

    url = f"sqlite:///{tmp_path / 'spend.db'}"
    db = Database(url)
    migrate(db)
    writer = LedgerWriter(url, tmp_path / "journal", release_reservations=False, interval=0.1)
    batches = []
    write_some = writer._write_some

    def counted() -> None:
        batches.append(len(writer._queue))
        write_some()
        time.sleep(0.02)

    writer._write_some = counted
    try:
        start = time.monotonic()
        for i in range(300):  # ~0.3 s of a record every millisecond
            writer.submit(journal_entry(record(f"r{i}", cost=0.001), 1_000_000, [["b", 0, 1_000_000]], None))
            time.sleep(0.001)
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 5
        while db.one("SELECT COUNT(*) FROM ledger")[0] < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert db.one("SELECT COUNT(*) FROM ledger")[0] == 300  # no flush needed
        assert len(batches) <= elapsed / 0.1 + 3, (len(batches), elapsed, batches)
    finally:
        writer.close()
        db.close()
