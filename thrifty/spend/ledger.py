"""The ledger: journal first (on the request path), database in batches (off it).

:meth:`LedgerWriter.submit` appends the record to the journal and queues it;
a background thread inserts queued records in batches, adds each newly
inserted record's cost to the budget counters it was reserved against, and
marks the journal offset, all in one transaction. The unique ``request_id``
makes replay after a crash idempotent: a record already in the ledger is not
inserted, nor counted, twice.
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter, itemgetter

import orjson

from thrifty.spend.contract import LedgerRecord
from thrifty.spend.db import Database
from thrifty.spend.journal import Journal
from thrifty.spend.money import usd_to_nanos

log = logging.getLogger("thrifty.spend.ledger")

COLUMNS = (
    "request_id", "ts", "key_id", "user_id", "team_id", "tags", "endpoint", "requested_model",
    "served_model", "provider", "route_reason", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cache_write_tokens", "input_price", "output_price", "cached_price", "cost_nanos",
    "frontier_cost_nanos", "latency_ms", "status", "error_type", "retries", "stream", "cache_hit",
    "batch", "scores", "route_context", "route_propensity", "route_explored",
)
_INSERT = (
    f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (request_id) DO NOTHING"
)

_RECORD_FIELDS = tuple(f.name for f in fields(LedgerRecord) if f.name not in ("cost_usd", "frontier_cost_usd"))
_record_values = attrgetter(*_RECORD_FIELDS)

# (budget_id, period_start, nanos) triples: what a record adds to which counter.
Charges = list[list]


def journal_entry(record: LedgerRecord, cost_nanos: int, charges: Charges, reservation_id: str | None) -> dict:
    """The journal's form of a record: the ledger row plus what it charges to which budget."""
    # Not dataclasses.asdict (it deep-copies recursively: ~30 us) nor a comprehension (a
    # bytecode loop over 30 fields): the fields are read and zipped in C.
    entry = dict(zip(_RECORD_FIELDS, _record_values(record)))
    entry["cost_nanos"] = cost_nanos
    try:
        entry["frontier_cost_nanos"] = usd_to_nanos(record.frontier_cost_usd)
    except (ValueError, TypeError, ArithmeticError):
        entry["frontier_cost_nanos"] = 0  # a counterfactual figure: never a reason to lose the record
    entry["charges"] = charges
    entry["reservation"] = reservation_id
    return entry


_column_values = itemgetter(*COLUMNS)
_TAGS, _STREAM, _CACHE_HIT, _BATCH, _SCORES, _EXPLORED = (
    COLUMNS.index(c) for c in ("tags", "stream", "cache_hit", "batch", "scores", "route_explored")
)


# Columns a journal entry written by an older version may lack, with the value they mean.
_LATER_COLUMNS = {"scores": None, "route_context": None, "route_propensity": None, "route_explored": False}


def _row(e: dict) -> list:
    """The ledger row of a journal entry (the columns read in C; six of them then converted)."""
    try:
        row = list(_column_values(e))
    except KeyError:  # journaled by a version without the later columns
        row = list(_column_values({**_LATER_COLUMNS, **e}))
    row[_TAGS] = orjson.dumps(list(row[_TAGS])).decode()
    row[_STREAM] = int(bool(row[_STREAM]))
    row[_CACHE_HIT] = int(bool(row[_CACHE_HIT]))
    row[_BATCH] = int(bool(row[_BATCH]))
    if row[_SCORES] is not None:
        row[_SCORES] = orjson.dumps(row[_SCORES]).decode()
    row[_EXPLORED] = int(bool(row[_EXPLORED]))
    return row


def write_batch(
    db: Database, entries: list[dict], marks: dict[str, int], *, release_reservations: bool
) -> dict[tuple[str, int], int]:
    """Insert entries, count newly inserted ones against their budgets, set journal marks.

    One transaction; returns the budget counters it added to.
    """
    with db.transaction():
        return write_entries(db, entries, marks, release_reservations=release_reservations)


def write_entries(
    db: Database, entries: list[dict], marks: dict[str, int], *, release_reservations: bool
) -> dict[tuple[str, int], int]:
    """:func:`write_batch` inside the caller's transaction (a reclaim writes its records in the
    same transaction that takes the holds)."""
    added: dict[tuple[str, int], int] = {}
    rows = [_row(e) for e in entries]
    if db.postgres:
        inserted = set()
        with db._conn.cursor() as cur:
            cur.executemany(db._sql(_INSERT) + " RETURNING request_id", rows, returning=True)
            while True:
                got = cur.fetchone()
                if got is not None:
                    inserted.add(got[0])
                if not cur.nextset():
                    break
        new = [e for e in entries if e["request_id"] in inserted]
    else:
        conn = db._conn
        new = [e for e, row in zip(entries, rows) if conn.execute(_INSERT, row).rowcount == 1]
    tokens: dict[tuple[str, int], int] = {}
    for e in new:
        for budget_id, period_start, nanos in e["charges"]:
            added[(budget_id, period_start)] = added.get((budget_id, period_start), 0) + nanos
        for scope, minute, count in e.get("rate_tokens") or ():
            tokens[(scope, minute)] = tokens.get((scope, minute), 0) + count
    if tokens:  # completion tokens against shared tokens-per-minute limits
        db.executemany(
            "INSERT INTO rate_windows (scope, minute, used) VALUES (?, ?, ?)"
            " ON CONFLICT (scope, minute) DO UPDATE SET used = rate_windows.used + excluded.used",
            [(s, m, n) for (s, m), n in sorted(tokens.items())],
        )
    if added:
        db.executemany(
            "INSERT INTO budget_spend (budget_id, period_start, spent_nanos) VALUES (?, ?, ?)"
            " ON CONFLICT (budget_id, period_start) DO UPDATE"
            " SET spent_nanos = budget_spend.spent_nanos + excluded.spent_nanos",
            [(b, p, n) for (b, p), n in sorted(added.items())],
        )
    if release_reservations:
        ids = [(e["reservation"],) for e in entries if e.get("reservation")]
        if ids:
            db.executemany("DELETE FROM reservations WHERE id = ?", ids)
    if marks:
        db.executemany(
            "INSERT INTO journal_marks (journal, byte_offset) VALUES (?, ?)"
            " ON CONFLICT (journal) DO UPDATE SET byte_offset = excluded.byte_offset",
            list(marks.items()),
        )
    return added


class LedgerWriter:
    """Owns this process's journal and the thread that moves it into the database."""

    def __init__(
        self,
        db_url: str,
        directory: pathlib.Path,
        *,
        release_reservations: bool,
        on_flush: Callable[[Database, dict[tuple[str, int], int]], None] | None = None,
        interval: float = 0.02,
        max_batch: int = 5000,
        journal_bytes: int = 64 * 1024 * 1024,
        queue_writes: bool = False,
    ) -> None:
        self._directory = directory
        self.journal = Journal(directory)
        self._journal_bytes = journal_bytes
        self._retired: list[Journal] = []  # full journals, deleted once all their records are in
        self._marked: dict[str, int] = {}  # journal id -> offset committed to the database
        self._db_url = db_url
        self._queue_writes = queue_writes  # see Database
        self._release = release_reservations
        self._on_flush = on_flush
        self._interval = interval
        self._max_batch = max_batch
        self._queue: deque[tuple[dict, Journal, int]] = deque()
        self._open: dict[str, Journal] = {}  # journaled holds not settled yet -> their journal
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._stop = False
        self._swept = time.monotonic()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="thrifty-ledger", daemon=True)
        self._thread.start()

    def note_hold(self, hold_id: str, line: dict) -> None:
        """Journal a hold (SQLite, where holds live in memory): if this process dies before the
        hold settles, the next start charges it (:func:`thrifty.spend.reclaim.replay_orphans`). Not queued: no
        database write; the journal is kept until the hold settles."""
        journal = self.journal
        journal.append(orjson.dumps(line) + b"\n")
        journal.holds_open += 1
        self._open[hold_id] = journal

    def submit(self, entry: dict) -> None:
        """Journal the entry (durable against a crash once this returns) and queue it."""
        journal = self.journal
        end = journal.append(orjson.dumps(entry) + b"\n")
        journal.records_end = end
        if self._open:
            held = self._open.pop(entry.get("reservation"), None)
            if held is not None:
                held.holds_open -= 1
        self._queue.append((entry, journal, end))
        self._submitted += 1
        if end >= self._journal_bytes:
            # Rotate: the full journal is deleted once the batcher has committed it.
            self.journal = Journal(self._directory)
            self._retired.append(journal)
        if len(self._queue) >= self._max_batch:
            self._wake.set()

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is in the database."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("ledger flush timed out")
                self._idle.wait(min(left, 0.05))
                self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=60)
        if not self._queue and not self._open:
            self.journal.sync()
            self.journal.close(delete=True)  # everything is in the database
        else:
            self.journal.close()
        for journal in self._retired:
            journal.close()  # not fully committed: replayed on the next start

    def _run(self) -> None:
        self._db = Database(self._db_url, queue_writes=self._queue_writes)
        try:
            while True:
                woken = self._wake.wait(self._interval)
                self._wake.clear()
                stopping = self._stop
                # Group commit: one batch per interval, however many records arrived meanwhile
                # (a batch's fsync and transaction cost about as much for 5 records as for 50;
                # writing again as soon as one ended made batches of ~5 under load). All that
                # is queued when woken: flush(), close(), a queue of max_batch.
                if self._queue:
                    self._write_some()
                while self._queue and (woken or stopping or len(self._queue) >= self._max_batch):
                    self._write_some()
                if self._retired:
                    self._drop_retired()
                if stopping:
                    if not self._queue and not self._open:  # clean stop: close() deletes the journal, so its mark goes
                        self._db.execute("DELETE FROM journal_marks WHERE journal = ?", (self.journal.id,))
                    break
        finally:
            self._db.close()

    def _drop_retired(self) -> None:
        for journal in list(self._retired):
            if self._marked.get(journal.id) == journal.records_end and not journal.holds_open:
                journal.close(delete=True)
                try:
                    self._db.execute("DELETE FROM journal_marks WHERE journal = ?", (journal.id,))
                except Exception as exc:  # noqa: BLE001 (a stale mark is harmless: replay skips missing files)
                    log.warning("could not delete the mark of journal %s: %s", journal.path.name, exc)
                self._retired.remove(journal)
                self._marked.pop(journal.id, None)

    def _write_some(self) -> None:
        batch: list[dict] = []
        marks: dict[str, int] = {}
        journals: dict[str, Journal] = {}
        while self._queue and len(batch) < self._max_batch:
            entry, journal, end = self._queue.popleft()
            batch.append(entry)
            marks[journal.id] = end
            journals[journal.id] = journal
        for journal in journals.values():
            try:
                journal.sync()  # power loss: the batch is on disk before the database says so
            except (OSError, ValueError) as exc:  # still in the page cache: only power loss could lose it
                log.warning("fsync of journal %s failed: %s", journal.path.name, exc)
        attempt = 0
        while True:
            try:
                added = write_batch(self._db, batch, marks, release_reservations=self._release)
                break
            except Exception as exc:  # noqa: BLE001 (the background writer retries whatever failed)
                # The database is down or locked. The batch is journaled, so we
                # keep it and retry (later batches must not pass it: they move
                # the journal mark).
                self.error = exc
                attempt += 1
                log.warning("ledger batch of %d failed (attempt %d): %s", len(batch), attempt, exc)
                time.sleep(min(0.05 * attempt, 1.0))
                try:
                    self._db.close()
                    self._db = Database(self._db_url, queue_writes=self._queue_writes)
                except Exception:  # noqa: S110, BLE001 (still down: the loop retries and reconnects again)
                    pass
        self.error = None
        self._marked.update(marks)
        self._drop_retired()
        if self._release and time.monotonic() - self._swept > 60:
            # Holds of requests that never settled (a process that died and never
            # restarted) stop counting at expiry; drop the rows too.
            self._swept = time.monotonic()
            try:
                self._db.execute("DELETE FROM reservations WHERE expires_at < ?", (time.time() - 60,))
                self._db.execute("DELETE FROM rate_windows WHERE minute < ?", (int(time.time() // 60) - 2,))
            except Exception as exc:  # noqa: BLE001 (a background sweep: log and go on)
                log.warning("sweeping expired budget holds failed: %s", exc)
        with self._idle:
            self._written += len(batch)
            self._idle.notify_all()
        if added and self._on_flush is not None:
            try:
                self._on_flush(self._db, added)
            except Exception:
                log.exception("budget alert check failed")
