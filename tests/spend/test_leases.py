"""Replica leases on PostgreSQL, in process: a replica that stops renewing (a dead one) has its
holds charged in full once, even with two survivors racing; a live one keeps its holds; a dead
process's journaled record whose hold was already charged is not charged again on replay."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest

from thrifty.spend import admin_ops
from thrifty.spend.control import DbSpendControl
from thrifty.spend.db import Database
from thrifty.spend.journal import Journal
from thrifty.spend.leases import ReplicaLease
from thrifty.spend.ledger import journal_entry
from thrifty.spend.reclaim import LOST_SUFFIX, LOST_TYPE, reclaim, replay_orphans
from thrifty.spend.schema import migrate

from .conftest import MODEL, record

HOLD = 0.004  # USD per request


def _setup(pg_url: str) -> str:
    db = Database(pg_url)
    migrate(db)
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng")
    admin_ops.set_budget(db, "team", "eng", amount_usd="1", period="daily")
    db.close()
    return secret


def _spend(pg_url: str, path, expiry: float = 0.6) -> DbSpendControl:
    return DbSpendControl(pg_url, path, admin_key="sk-thr-admin-pg", lease_heartbeat=expiry / 4, lease_expiry=expiry)


async def _hold_some(spend: DbSpendControl, secret: str, n: int, prefix: str) -> None:
    p = await spend.authenticate(secret)
    for i in range(n):
        await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=HOLD, request_id=f"{prefix}-{i}")


def _die(spend: DbSpendControl) -> None:
    """What SIGKILL does to the lease: it is no longer renewed (nothing else is touched)."""
    assert spend.lease is not None
    spend.lease._stop.set()
    spend.lease._thread.join()


def test_a_dead_replicas_holds_are_charged_once_by_racing_survivors_and_a_live_ones_kept(tmp_path, pg_url):
    secret = _setup(pg_url)
    dead = [_spend(pg_url, tmp_path / f"dead{i}") for i in range(3)]
    live = _spend(pg_url, tmp_path / "live", expiry=60)  # renews (and reaps) only after the test
    for i, spend in enumerate(dead):
        asyncio.run(_hold_some(spend, secret, 4, f"d{i}"))
        _die(spend)
    asyncio.run(_hold_some(live, secret, 2, "live"))
    db = Database(pg_url)
    try:
        assert db.one("SELECT COUNT(*) FROM reservations")[0] == 14
        # Survivors that do not reap on their own: the test makes them race.
        one, two = (ReplicaLease(pg_url, f"survivor-{i}", heartbeat=30, expiry=60) for i in range(2))
        time.sleep(0.8)  # the dead replicas' leases lapse; the live one renews its own
        assert reclaim(db, live.lease.replica, time.time()) == 0  # a live lease: its holds stay
        counts: list[int] = []
        start = threading.Barrier(2)

        def reap(lease: ReplicaLease) -> None:
            own = Database(pg_url)
            try:
                start.wait()
                counts.append(lease.reap(own, time.time()))
            finally:
                own.close()

        threads = [threading.Thread(target=reap, args=(x,)) for x in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(counts) == 12  # every dead hold charged once, whoever got it
        rows = db.all("SELECT request_id, cost_nanos, status, error_type, team_id FROM ledger ORDER BY request_id")
        assert [r[0] for r in rows] == sorted(f"d{i}-{j}{LOST_SUFFIX}" for i in range(3) for j in range(4))
        assert {r[1:] for r in rows} == {(4_000_000, 502, LOST_TYPE, "eng")}
        assert db.one("SELECT SUM(spent_nanos) FROM budget_spend")[0] == 12 * 4_000_000
        assert db.all("SELECT owner, COUNT(*) FROM reservations GROUP BY owner") == [(live.lease.replica, 2)]
        assert [r[0] for r in db.all("SELECT replica FROM replica_leases ORDER BY replica")] == sorted(
            [live.lease.replica, "survivor-0", "survivor-1"])
        assert one.reap(db, time.time() + 1) + two.reap(db, time.time() + 1) == 0  # nothing twice
        one.close()
        two.close()
    finally:
        db.close()
        for spend in (*dead, live):
            asyncio.run(spend.close())


def test_a_replica_taken_for_dead_takes_its_lease_again(tmp_path, pg_url):
    _setup(pg_url)
    lease = ReplicaLease(pg_url, "stalled", heartbeat=0.1, expiry=0.3)
    db = Database(pg_url)
    try:
        lease._stop.set()
        lease._thread.join()
        time.sleep(0.4)
        assert reclaim(db, "stalled", time.time()) == 0  # no holds, but the lapsed lease goes
        assert db.one("SELECT COUNT(*) FROM replica_leases WHERE replica = 'stalled'")[0] == 0
        lease._renew(db, time.time())
        assert db.one("SELECT expires_at > ? FROM replica_leases WHERE replica = 'stalled'", (time.time(),)) == (True,)
        lease.close()
        # A clean close with no holds left removes the row.
        assert db.one("SELECT COUNT(*) FROM replica_leases WHERE replica = 'stalled'")[0] == 0
    finally:
        db.close()


def test_replay_skips_a_journaled_record_whose_hold_was_charged_as_lost(tmp_path, pg_url):
    secret = _setup(pg_url)
    spend = _spend(pg_url, tmp_path / "dead", expiry=0.4)
    asyncio.run(_hold_some(spend, secret, 2, "r"))
    _die(spend)
    db = Database(pg_url)
    try:
        survivor = ReplicaLease(pg_url, "survivor", heartbeat=30, expiry=60)
        time.sleep(0.5)
        assert survivor.reap(db, time.time()) == 2
        survivor.close()
        # The dead replica had settled r-0 in its journal, not yet in the database (killed between
        # the two): its hold is charged already, so replaying that record must not charge it again.
        journal = Journal(tmp_path / "orphans")
        entry = journal_entry(record("r-0", cost=0.001), 1_000_000, [["x", 0, 1_000_000]], "hold-of-r-0")
        journal.append(orjson.dumps(entry) + b"\n")
        other = journal_entry(record("r-9", cost=0.002), 2_000_000, [], "hold-of-r-9")
        journal.append(orjson.dumps(other) + b"\n")
        journal.close()  # unlocked: its process is gone
        assert replay_orphans(db, tmp_path / "orphans", release_reservations=True) == 2
        ids = [r[0] for r in db.all("SELECT request_id FROM ledger ORDER BY request_id")]
        assert ids == ["r-0" + LOST_SUFFIX, "r-1" + LOST_SUFFIX, "r-9"]
        assert db.one("SELECT COUNT(*) FROM budget_spend WHERE budget_id = 'x'")[0] == 0
    finally:
        db.close()
        asyncio.run(spend.close())


def test_sqlite_a_journal_with_a_hold_open_is_kept_until_it_settles(tmp_path):
    """SQLite journals its holds: a full journal is deleted only once its holds have settled."""
    from thrifty.spend.db import sqlite_url
    from thrifty.spend.ledger import LedgerWriter
    from thrifty.spend.reclaim import hold_about, hold_line

    url = sqlite_url(tmp_path / "spend.db")
    db = Database(url)
    migrate(db)
    db.close()
    writer = LedgerWriter(url, tmp_path / "journal", release_reservations=False, journal_bytes=1)
    try:
        first = writer.journal
        writer.note_hold("h1", hold_line("h1", 5, [["b", 0, 5]], hold_about("r1", None, None, "t", (), "m")))
        writer.submit(journal_entry(record("other"), 0, [], None))  # fills the journal: rotated
        writer.flush()
        time.sleep(0.1)
        assert first.path.exists()  # its records are in, but the hold h1 is still open
        writer.submit(journal_entry(record("r1"), 3, [["b", 0, 3]], "h1"))
        writer.flush()
        deadline = time.monotonic() + 5
        while first.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not first.path.exists()
    finally:
        writer.close()


def test_sqlite_a_hold_left_at_close_is_charged_at_the_next_start(tmp_path):
    from thrifty.spend.db import sqlite_url

    url = sqlite_url(tmp_path / "spend.db")
    db = Database(url)
    migrate(db)
    admin_ops.create_team(db, "eng")
    _rec, secret = admin_ops.create_key(db, team_id="eng")
    admin_ops.set_budget(db, "team", "eng", amount_usd="1", period="daily")
    db.close()
    spend = DbSpendControl(url, tmp_path / "journal", admin_key="sk-thr-admin-test")

    async def run() -> None:
        p = await spend.authenticate(secret)
        done = await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=HOLD, request_id="settled")
        await spend.admit(p, MODEL, prompt_tokens=1, max_cost_usd=HOLD, request_id="in-flight")
        await spend.settle(done, record("settled", cost=0.001))
        await spend.close()  # with a request still in flight: its journal stays

    asyncio.run(run())
    assert len(list((tmp_path / "journal").glob("*.journal"))) == 1
    again = DbSpendControl(url, tmp_path / "journal", admin_key="sk-thr-admin-test")
    try:
        db = Database(url)
        rows = db.all("SELECT request_id, cost_nanos, error_type FROM ledger ORDER BY request_id")
        assert rows == [("in-flight" + LOST_SUFFIX, 4_000_000, LOST_TYPE), ("settled", 1_000_000, None)]
        assert db.one("SELECT spent_nanos FROM budget_spend")[0] == 5_000_000
        db.close()
    finally:
        asyncio.run(again.close())
    assert not list((tmp_path / "journal").glob("*.journal"))


@pytest.mark.parametrize("written_by", ["this version", "before 2026-12-06"])
def test_sqlite_replay_charges_only_the_journaled_holds_no_record_settled(tmp_path, written_by):
    """A hold settled in the journal, or by a record already in the ledger (its journal was
    rotated and deleted), is not charged; one never settled is, once, even on a second replay.
    Journals of older versions (whose hold lines carry their detail as a JSON string) too."""
    from thrifty.spend.db import sqlite_url
    from thrifty.spend.ledger import write_batch
    from thrifty.spend.reclaim import hold_about, hold_detail, hold_line

    url = sqlite_url(tmp_path / "spend.db")
    db = Database(url)
    migrate(db)
    try:
        write_batch(db, [journal_entry(record("r-rotated", cost=0.001), 1_000, [["b", 0, 1_000]], "h-rotated")], {},
                    release_reservations=False)

        def orphan_journal(name: str) -> None:
            journal = Journal(tmp_path / name)
            for rid in ("r-rotated", "r-settled", "r-open"):
                about = hold_about(rid, "k", None, "t", (), "m")
                line = hold_line(f"h-{rid[2:]}", 7_000, [["b", 0, 7_000]], about)
                if written_by != "this version":
                    line["detail"] = hold_detail(about)
                journal.append(orjson.dumps(line) + b"\n")
            settle = journal_entry(record("r-settled", cost=0.000002), 2_000, [["b", 0, 2_000]], "h-settled")
            journal.append(orjson.dumps(settle) + b"\n")
            journal.close()  # unlocked: its process is gone

        orphan_journal("one")
        assert replay_orphans(db, tmp_path / "one", release_reservations=False) == 1
        orphan_journal("two")  # the same journal again (a replay cut short before deleting it)
        replay_orphans(db, tmp_path / "two", release_reservations=False)
        rows = db.all("SELECT request_id, cost_nanos, error_type, key_id FROM ledger ORDER BY request_id")
        assert rows == [("r-open" + LOST_SUFFIX, 7_000, LOST_TYPE, "k"), ("r-rotated", 1_000, None, None),
                        ("r-settled", 2_000, None, None)]
        assert db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = 'b'")[0] == 10_000
    finally:
        db.close()
