"""Labels in the spend database: what every replica learns from, and what survives a restart.

A label is written once per (request, source) by :func:`store`: the user's feedback or the
judge's grade on a routed answer, with the model that answered, the caller's team and the
prompt's context, all read from the answer's ledger row (so a label can only be about a
request the ledger has, routed by the learner). Re-rating replaces the label.

:class:`LabelSync` loads labels into a replica's :class:`~thrifty.router.learning.Learner`: all
of them at start, then those written since (by this replica or another) every ``sync_s``
seconds, and at once after a write in this process (:func:`poll_now`): the next request
routes with the update.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from thrifty.router.online import Label, decode_context
from thrifty.spend.db import Database

log = logging.getLogger("thrifty.router")

SOURCES = ("feedback", "judge")
_OVERLAP_S = 5.0  # re-read this far back: rows committed late by another replica are not missed

_SYNCS: dict[str, list[LabelSync]] = {}
_SYNCS_LOCK = threading.Lock()


def store(db: Database, request_id: str, source: str, score: float, weight: float = 1.0) -> bool:
    """Write the label of a routed answer; False when the request was not routed by learning
    (no prompt context in its ledger row: a named model, a cache hit, a refusal)."""
    row = db.one("SELECT served_model, route_context, team_id, ts FROM ledger WHERE request_id = ?",
                 (request_id,))
    if row is None or row[0] is None or not row[1]:
        return False
    now = time.time()
    db.execute(
        "INSERT INTO router_labels (request_id, source, ts, updated_at, team_id, model, score, weight, context)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, source) DO UPDATE SET"
        " updated_at = excluded.updated_at, score = excluded.score, weight = excluded.weight",
        (request_id, source, float(row[3]), now, row[2], row[0], float(score), float(weight), row[1]),
    )
    return True


class LabelSync:
    """Feeds the labels of one database to ``learn(team_id, label)``."""

    def __init__(self, db_url: str, learn: Callable[[str | None, Label], None],
                 count: Callable[[str], None] | None = None) -> None:
        self.db_url = db_url
        self.learn = learn
        self.count = count  # called with each loaded label's source (the gateway's metrics)
        self.db: Database | None = None
        self.cursor = 0.0
        self.seen: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.loaded = 0
        self.closed = False

    def register(self) -> None:
        with _SYNCS_LOCK:
            _SYNCS.setdefault(self.db_url, []).append(self)

    def unregister(self) -> None:
        with _SYNCS_LOCK:
            if self in _SYNCS.get(self.db_url, []):
                _SYNCS[self.db_url].remove(self)

    def poll(self) -> int:
        """Load labels written since the last poll; returns how many were new or changed."""
        with self.lock:
            if self.closed:
                return 0
            if self.db is None:
                self.db = Database(self.db_url)
            rows = self.db.all(
                "SELECT request_id, source, updated_at, team_id, model, score, weight, context, ts"
                " FROM router_labels WHERE updated_at >= ? ORDER BY updated_at",
                (self.cursor - _OVERLAP_S,),
            )
            fresh = 0
            for rid, source, updated, team, model, score, weight, text, ts in rows:
                key = (rid, source)
                if self.seen.get(key) == updated:
                    continue
                self.seen[key] = updated
                ctx = decode_context(text)
                if ctx is None or not 0.0 <= score <= 1.0:
                    continue
                # One label per request: a judge's grade and a user's rating of the same answer
                # are two labels, each under its own id.
                self.learn(team, Label(f"{rid}:{source}", model, float(score), ctx, float(weight), float(ts)))
                fresh += 1
                if self.count is not None:
                    self.count(source)
            if rows:
                self.cursor = max(self.cursor, float(rows[-1][2]))
            # Forget what is older than the overlap window: those rows are not read again.
            if len(self.seen) > 50_000:
                horizon = self.cursor - _OVERLAP_S
                self.seen = {k: v for k, v in self.seen.items() if v >= horizon}
            self.loaded += fresh
            return fresh

    def close(self) -> None:
        """Stop for good; waits for a poll in flight (its connection must not close under it)."""
        self.unregister()
        with self.lock:
            self.closed = True
            if self.db is not None:
                self.db.close()
                self.db = None


def poll_now(db_url: str) -> None:
    """After a label was written in this process: every sync on that database loads it now."""
    with _SYNCS_LOCK:
        syncs = list(_SYNCS.get(db_url, ()))
    for sync in syncs:
        try:
            sync.poll()
        except Exception:
            log.exception("label sync failed")
