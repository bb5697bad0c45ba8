"""Replica leases: how the gateways sharing a spend database learn that one of them died.

Each replica keeps a row in ``replica_leases`` and renews it every ``heartbeat`` seconds to
``now + expiry``, from a background thread (nothing on the request path: a hold names its
owner in the insert it already makes). Every replica, on each heartbeat, also charges the holds
of the replicas whose lease lapsed (:func:`thrifty.spend.reclaim.reclaim`), so a dead
replica's holds become spend in the ledger within ``expiry + heartbeat`` seconds of its death
instead of lingering until ``hold_ttl``. Times are the replicas' clocks: they must agree to well within ``expiry``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from thrifty.spend.db import Database, every
from thrifty.spend.reclaim import reclaim

log = logging.getLogger("thrifty.spend")

HEARTBEAT_S = 15.0
EXPIRY_S = 45.0


class ReplicaLease:
    """This process's lease (taken at construction, before any hold) and the reaper thread."""

    def __init__(self, db_url: str, replica: str, *, heartbeat: float = HEARTBEAT_S, expiry: float = EXPIRY_S) -> None:
        if not 0 < heartbeat < expiry:
            raise ValueError(f"the lease heartbeat ({heartbeat} s) must be positive and below its expiry ({expiry} s)")
        self.replica = replica
        self._url = db_url
        self._heartbeat = heartbeat
        self._expiry = expiry
        self.reclaimed = 0  # holds of dead replicas this replica charged
        self._taken = False
        db = Database(db_url)
        try:
            self._renew(db, time.time())
        finally:
            db.close()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thrifty-spend-lease", daemon=True)
        self._thread.start()

    def _renew(self, db: Database, now: float) -> None:
        updated = db.execute(
            "UPDATE replica_leases SET renewed_at = ?, expires_at = ? WHERE replica = ?",
            (now, now + self._expiry, self.replica),
        ).rowcount
        if updated == 1:
            return
        if self._taken:
            # Another replica took us for dead (we stalled past our expiry) and charged our holds:
            # their requests are charged twice when they settle, never not at all.
            log.error("replica %s: its lease had lapsed and its holds were charged by another replica",
                      self.replica)
        db.execute(
            "INSERT INTO replica_leases (replica, host, pid, started_at, renewed_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (replica) DO UPDATE"
            " SET renewed_at = excluded.renewed_at, expires_at = excluded.expires_at",
            (self.replica, socket.gethostname(), os.getpid(), now, now, now + self._expiry),
        )
        self._taken = True

    def reap(self, db: Database, now: float) -> int:
        """Charge the holds of every replica whose lease lapsed; returns how many."""
        lapsed = db.all("SELECT replica FROM replica_leases WHERE expires_at < ? AND replica <> ?", (now, self.replica))
        charged = sum(reclaim(db, owner, now) for (owner,) in lapsed)
        self.reclaimed += charged
        return charged

    def _run(self) -> None:
        def beat(db: Database) -> None:
            self._renew(db, time.time())
            self.reap(db, time.time())

        every(self._heartbeat, self._stop, self._url, beat, "replica lease renewal")

    def close(self) -> None:
        """Stop renewing and give the lease up: holds left unsettled (none after a clean drain) are
        charged by the next replica that looks; with none, the row just goes."""
        self._stop.set()
        self._thread.join(timeout=10)
        db = Database(self._url)
        try:
            db.execute("UPDATE replica_leases SET expires_at = 0 WHERE replica = ?", (self.replica,))
            db.execute(
                "DELETE FROM replica_leases WHERE replica = ? AND NOT EXISTS"
                " (SELECT 1 FROM reservations WHERE owner = ? AND detail IS NOT NULL)",
                (self.replica, self.replica),
            )
        except Exception as exc:  # noqa: BLE001 (shutting down: the lease lapses anyway)
            log.warning("could not give up the replica lease: %s", exc)
        finally:
            db.close()
