"""Charging the holds of a replica that died.

A dead replica's requests in flight may have been served upstream, and what the upstream did
for them is unknowable, so each of its holds becomes a ledger record at the held amount (the
most the request could cost), ``status`` 502 and ``error_type`` ``replica_died``, and moves from
held to spent: never silently released. Exactly once: the holds are taken by ``DELETE ...
RETURNING`` in the transaction that writes their records, so when two survivors race, each row
goes to one of them (row locks on PostgreSQL, the write lock on SQLite).

On SQLite (one gateway process) holds live in memory, so each is journaled
(:func:`hold_line`) and the next start charges those that never settled
(:func:`replay_orphans`, with :func:`lost_entry`).

Only holds with a ``detail`` (a request's own hold, taken by ``admit`` with its request id) are
charged; the holds of batch lines belong to their batch, whose next runner runs or bills each
line again (and holds it again), and expire as before.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any

import orjson

from thrifty.spend.db import Database
from thrifty.spend.journal import orphans
from thrifty.spend.ledger import write_batch, write_entries

log = logging.getLogger("thrifty.spend")

LOST_TYPE = "replica_died"
LOST_STATUS = 502
LOST_SUFFIX = ":lost"


def hold_about(request_id: str | None, key_id: str | None, user_id: str | None, team_id: str | None,
               tags: tuple[str, ...], model: str) -> dict[str, Any]:
    """Whose request a hold is for, for the record written if its replica dies."""
    return {"request_id": request_id, "key_id": key_id, "user_id": user_id, "team_id": team_id,
            "tags": list(tags), "model": model}


def hold_detail(about: dict[str, Any]) -> str:
    """:func:`hold_about` as a hold's row stores it (PostgreSQL)."""
    return orjson.dumps(about).decode()


def lost_request_id(request_id: str | None, hold_id: str) -> str:
    """The ledger id of a reclaimed hold's record: its request's id plus a suffix, so that a
    request run again under the same id (a batch line resumed by another replica) keeps its own
    record and both attempts are charged."""
    return f"{request_id}{LOST_SUFFIX}" if request_id else f"hold:{hold_id}{LOST_SUFFIX}"


def reclaim(db: Database, owner: str, now: float, *, lapsed_only: bool = True) -> int:
    """Charge every request hold of replica ``owner`` in full; returns how many were charged.

    ``lapsed_only``: only if ``owner``'s lease has lapsed (checked under its row's lock, so a
    replica that renewed meanwhile keeps its holds); False when its death is known otherwise
    (its journal is unlocked).
    """
    with db.transaction():
        if lapsed_only:
            lock = " FOR UPDATE" if db.postgres else ""
            row = db.one(f"SELECT expires_at FROM replica_leases WHERE replica = ?{lock}", (owner,))
            if row is None or float(row[0]) >= now:
                return 0
        rows = db.all(
            "DELETE FROM reservations WHERE owner = ? AND detail IS NOT NULL"
            " RETURNING id, budget_id, period_start, amount_nanos, detail",
            (owner,),
        )
        db.execute("DELETE FROM replica_leases WHERE replica = ?", (owner,))
        entries = lost_entries(rows, owner, now)
        if entries:
            write_entries(db, entries, {}, release_reservations=False)
    if entries:
        log.warning("replica %s died with %d request(s) in flight: charged their holds in full (%s)",
                    owner, len(entries), LOST_TYPE)
    return len(entries)


def lost_entries(rows: list[tuple], owner: str, now: float) -> list[dict[str, Any]]:
    """One ledger entry per hold (a hold has a row per budget it counts against)."""
    holds: dict[str, dict[str, Any]] = {}
    for hold_id, budget_id, period_start, amount, detail in rows:
        entry = holds.get(hold_id)
        if entry is None:
            entry = holds[hold_id] = _entry(hold_id, int(amount), orjson.loads(detail), owner, now)
        entry["charges"].append([budget_id, int(period_start), int(amount)])
    return list(holds.values())


def hold_line(hold_id: str, amount: int, charges: list[list], about: dict[str, Any]) -> dict[str, Any]:
    """A hold as journaled on SQLite (holds live in the process's memory there)."""
    return {"hold": hold_id, "amount": amount, "charges": charges, "detail": about}


def _about(line: dict[str, Any]) -> dict[str, Any]:
    """A journaled hold's :func:`hold_about` (journals written before 2026-12-06 hold it as a
    JSON string)."""
    about = line["detail"]
    return orjson.loads(about) if isinstance(about, str) else about


def lost_entry(hold_id: str, line: dict[str, Any], owner: str, now: float) -> dict[str, Any]:
    """The record of a journaled hold (:func:`hold_line`) whose process died before it settled."""
    entry = _entry(hold_id, int(line["amount"]), _about(line), owner, now)
    entry["charges"] = [list(c) for c in line["charges"]]
    return entry


def _entry(hold_id: str, amount: int, d: dict[str, Any], owner: str, now: float) -> dict[str, Any]:
    return {
        "request_id": lost_request_id(d.get("request_id"), hold_id), "ts": now,
        "key_id": d.get("key_id"), "user_id": d.get("user_id"), "team_id": d.get("team_id"),
        "tags": d.get("tags") or [], "endpoint": None, "requested_model": d.get("model"),
        "served_model": None, "provider": None,
        "route_reason": f"gateway {owner} died with this request in flight; its upstream may have served it, "
                        "so its hold is charged in full",
        "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0,
        "input_price": 0.0, "output_price": 0.0, "cached_price": 0.0,
        "cost_nanos": amount, "frontier_cost_nanos": 0, "latency_ms": None,
        "status": LOST_STATUS, "error_type": LOST_TYPE, "retries": 0, "stream": False, "cache_hit": False,
        "batch": False, "scores": None, "charges": [], "reservation": None,
    }


def replay_orphans(db: Database, directory: pathlib.Path, *, release_reservations: bool, batch: int = 2000) -> int:
    """Bring the journals of dead processes into the ledger, then delete them; returns records read.

    Requests those processes had in flight may have been served upstream: their holds are
    charged in full (:func:`reclaim`, :func:`lost_entry`): on PostgreSQL the hold rows they own, on
    SQLite the holds journaled (``release_reservations`` False) and never settled.
    """
    count = 0
    found = orphans(directory)
    holds: dict[str, tuple[str, dict]] = {}  # journaled holds (SQLite) -> (journal, line)
    settled: set[str] = set()
    for orphan in found:
        row = db.one("SELECT byte_offset FROM journal_marks WHERE journal = ?", (orphan.id,))
        offset = int(row[0]) if row else 0
        pending: list[dict] = []
        end = offset
        # SQLite: a hold may be journaled before the mark (records of other requests went in
        # after it), so the whole journal is read for holds; records before the mark are in.
        for end, entry in orphan.records(offset if release_reservations else 0):
            if "hold" in entry:
                holds[entry["hold"]] = (orphan.id, entry)
                continue
            if entry.get("reservation"):
                settled.add(entry["reservation"])
            if end <= offset:
                continue
            pending.append(entry)
            if len(pending) >= batch:
                _replay(db, pending, {orphan.id: end}, release_reservations)
                count += len(pending)
                pending = []
        if pending:
            _replay(db, pending, {orphan.id: end}, release_reservations)
            count += len(pending)
    now = time.time()
    open_holds = {h: v for h, v in holds.items() if h not in settled}
    # A hold whose record went into a journal deleted since (rotated, all in) is settled too.
    done = _in_ledger(db, [_about(line)["request_id"] for _owner, line in open_holds.values()])
    lost = [lost_entry(hold_id, line, owner, now) for hold_id, (owner, line) in open_holds.items()
            if _about(line)["request_id"] not in done]
    if lost:  # once: a replay cut short and run again inserts the same ids, which count once
        write_batch(db, lost, {}, release_reservations=False)
        log.warning("a dead gateway had %d request(s) in flight: charged their holds in full", len(lost))
    for orphan in found:
        if release_reservations:
            # Exactly once, even if a survivor reclaims them too.
            reclaim(db, orphan.id, now, lapsed_only=False)
        with db.transaction():
            if release_reservations:
                # What is left (a provider batch's line holds) is held again by the batch's next runner.
                db.execute("DELETE FROM reservations WHERE owner = ?", (orphan.id,))
            db.execute("DELETE FROM journal_marks WHERE journal = ?", (orphan.id,))
        orphan.remove()
        log.info("replayed journal %s", orphan.path.name)
    return count


def _replay(db: Database, entries: list[dict], marks: dict[str, int], release_reservations: bool) -> None:
    """Write a dead process's journaled records, but those whose hold a survivor already charged
    in full as lost (its record is that request's charge: no request is charged twice)."""
    if release_reservations:
        lost = _in_ledger(db, [e["request_id"] + LOST_SUFFIX for e in entries if e.get("reservation")])
        if lost:
            log.warning("%d journaled record(s) of a dead process were already charged as lost", len(lost))
            entries = [e for e in entries if e["request_id"] + LOST_SUFFIX not in lost]
    write_batch(db, entries, marks, release_reservations=release_reservations)


def _in_ledger(db: Database, request_ids: list[str]) -> set[str]:
    """Which of ``request_ids`` the ledger holds."""
    found: set[str] = set()
    for i in range(0, len(request_ids), 500):
        chunk = request_ids[i : i + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(r[0] for r in db.all(f"SELECT request_id FROM ledger WHERE request_id IN ({marks})", chunk))
    return found
