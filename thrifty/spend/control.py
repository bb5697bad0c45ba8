"""The database-backed :class:`~thrifty.spend.contract.SpendControl` the gateway uses.

Hot path (authenticate, allowed, admit, settle) works on in-memory state: a
snapshot of keys, budgets and policies, rate-limit windows and budget holds
(in memory on SQLite with one gateway process; on PostgreSQL one server-side
call per admit for the holds and one for rate limits, so that every gateway
shares them; with ``shared`` on SQLite, for the worker processes of ``thrifty
serve --workers N``, one SQLite write transaction for each), and the journal
append. Everything else happens in background threads.

What stays per process: the snapshot (each process reloads it within
``poll_interval`` of a change made anywhere) and the ledger journal.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import pathlib
import secrets
import threading
import time
from collections.abc import Sequence

from thrifty.catalog.model import ModelInfo
from thrifty.spend.admin_ops import ensure_admin_key
from thrifty.spend.alerts import check_thresholds
from thrifty.spend.budgets import Hold, MemoryBudgets, PostgresBudgets, SqliteBudgets, window_ended
from thrifty.spend.contract import (
    AuthError,
    LedgerRecord,
    PolicyDenied,
    Principal,
    Reservation,
    SpendError,
    SpendUnavailable,
)
from thrifty.spend.db import AsyncPgPool, Database, every
from thrifty.spend.keys import bearer_token, hash_key, same_hash
from thrifty.spend.leases import EXPIRY_S, HEARTBEAT_S, ReplicaLease
from thrifty.spend.ledger import LedgerWriter, journal_entry
from thrifty.spend.money import usd_to_nanos
from thrifty.spend.periods import iso, period_bounds
from thrifty.spend.policy import filter_models
from thrifty.spend.ratelimit import Check, MemoryRateLimiter, PostgresRateLimiter, SqliteRateLimiter
from thrifty.spend.reclaim import hold_about, hold_detail, hold_line, replay_orphans
from thrifty.spend.schema import config_version, migrate
from thrifty.spend.snapshot import BudgetEntry, Snapshot, load_snapshot

log = logging.getLogger("thrifty.spend")


class DbSpendControl:
    """Spend control over SQLite (one gateway process, or the processes of one host with
    ``shared``) or PostgreSQL (any number)."""

    def __init__(
        self,
        db_url: str,
        journal_dir: pathlib.Path,
        *,
        admin_key: str | None = None,
        hold_ttl: float = 3600.0,
        poll_interval: float = 1.0,
        flush_interval: float = 0.02,
        shared: bool = False,
        lease_heartbeat: float = HEARTBEAT_S,
        lease_expiry: float = EXPIRY_S,
    ) -> None:
        """``lease_heartbeat``/``lease_expiry`` (PostgreSQL): how often this replica renews its
        lease and how long it lasts; a dead replica's holds are charged within their sum."""
        self.db_url = db_url
        self.db = Database(db_url)
        self.postgres = self.db.postgres
        # Holds and rate windows in the database (PostgreSQL, or SQLite shared by workers):
        # the ledger batch releases a hold when it records the request.
        in_db = self.postgres or shared
        self._shared_db: Database | None = None
        self._lock_fd = -1
        if not self.postgres:
            self._lock_fd = _lock_sqlite(db_url, self.db.path, shared=shared)
        migrate(self.db)
        #: A freshly generated admin key, to show once; None when one existed or was configured.
        self.generated_admin_key = ensure_admin_key(self.db, admin_key)
        self.replayed = replay_orphans(self.db, journal_dir, release_reservations=in_db)
        self._snapshot = load_snapshot(self.db)
        self.pool = AsyncPgPool(db_url) if self.postgres else None
        if not self.postgres and shared:
            self._shared_db = Database(db_url, queue_writes=True)  # holds and rate windows
        self.limiter: MemoryRateLimiter | PostgresRateLimiter | SqliteRateLimiter
        if self.pool is not None:
            self.limiter = PostgresRateLimiter(self.pool)
        elif self._shared_db is not None:
            self.limiter = SqliteRateLimiter(self._shared_db)
        else:
            self.limiter = MemoryRateLimiter()
        self._periods: dict[str, tuple[BudgetEntry, int, float | None]] = {}  # budget id -> current period
        # Hold ids: unique per control (random) and per hold (a counter): a getrandom() per
        # request cost more than the rest of the id.
        self._hold_prefix = secrets.token_hex(6)
        self._hold_count = itertools.count(1)
        self.writer = LedgerWriter(
            db_url, journal_dir, release_reservations=in_db, interval=flush_interval,
            queue_writes=self._shared_db is not None,
            on_flush=lambda db, added: check_thresholds(db, lambda: self._snapshot, added),
        )
        self.budgets: MemoryBudgets | PostgresBudgets | SqliteBudgets
        self.lease: ReplicaLease | None = None
        if self.pool is not None:
            # The replica id is this process's first journal's: the holds it takes name it, and a
            # restart that finds that journal unlocked knows the replica died.
            replica = self.writer.journal.id
            self.lease = ReplicaLease(db_url, replica, heartbeat=lease_heartbeat, expiry=lease_expiry)
            self.budgets = PostgresBudgets(self.pool, replica, hold_ttl=hold_ttl)
        elif self._shared_db is not None:
            self.budgets = SqliteBudgets(self._shared_db, self.writer.journal.id, hold_ttl=hold_ttl)
        else:
            self.budgets = MemoryBudgets(self.db)
        self._stop = threading.Event()
        self._poll_interval = poll_interval
        self._watcher = threading.Thread(target=self._watch, name="thrifty-spend-config", daemon=True)
        self._watcher.start()

    # --- config -------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def reload(self) -> None:
        """Reload keys, budgets and policies now (the admin API calls this after a change)."""
        self._snapshot = load_snapshot(self.db)

    def _watch(self) -> None:
        def reload(db: Database) -> None:
            if config_version(db) != self._snapshot.version:
                self._snapshot = load_snapshot(db)

        every(self._poll_interval, self._stop, self.db_url, reload, "spend config reload")

    # --- the SpendControl protocol ------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
        digest = hash_key(token)
        entry = self._snapshot.keys.get(digest)
        if entry is None or not same_hash(entry.key_hash, digest):
            raise AuthError("Invalid API key.")
        if entry.revoked:
            raise AuthError(f"API key {entry.id} has been revoked.")
        if entry.expires_at is not None and entry.expires_at <= time.time():
            raise AuthError(f"API key {entry.id} expired at {iso(entry.expires_at)}.")
        return entry.principal

    def allowed(self, principal: Principal, candidates: Sequence[ModelInfo]) -> list[ModelInfo]:
        policies = self._snapshot.policies_for(principal)
        if not policies:
            return list(candidates)
        kept, denied = filter_models(policies, candidates)
        if not kept:
            whose = " and ".join(
                f"{scope} {ident!r}" for scope, ident in (("key", principal.key_id), ("team", principal.team_id))
                if ident is not None and (scope, ident) in self._snapshot.policies
            )
            shown = "; ".join(f"{name}: {why}" for name, why in list(denied.items())[:8])
            more = f" (and {len(denied) - 8} more)" if len(denied) > 8 else ""
            raise PolicyDenied(
                f"No model is permitted by the policy of {whose}. "
                + (f"Denied: {shown}{more}." if denied else "No candidate model was offered.")
            )
        return kept

    async def admit(
        self, principal: Principal, model: ModelInfo, *, prompt_tokens: int, max_cost_usd: float,
        ttl: float | None = None, request_id: str | None = None,
    ) -> Reservation:
        """``ttl`` (PostgreSQL): how long the hold counts if never settled (default: ``hold_ttl``;
        a line waiting on a provider's batch passes its batch's completion window). ``request_id``:
        the request the hold is for, charged in full under that id if this process dies holding
        it; None (or a ``ttl``) for a hold that something else recovers (a batch line's)."""
        if principal.is_admin:
            return Reservation(principal, model.name, max_cost_usd)
        amount = usd_to_nanos(max_cost_usd, round_up=True)
        if amount < 0:
            raise ValueError(f"max_cost_usd must not be negative (got {max_cost_usd!r})")
        now = time.time()
        snap = self._snapshot
        checks = self._rate_checks(snap, principal, prompt_tokens)
        try:
            if checks:
                await self.limiter.take(checks, now)
            about = detail = None
            if ttl is None and request_id is not None:  # charged in full if this process dies with it
                about = hold_about(request_id, principal.key_id, principal.user_id, principal.team_id,
                                   principal.tags, model.name)
                if self.postgres:  # in the hold's row
                    detail = hold_detail(about)
            hold = await self._hold(snap, principal, amount, now, ttl=ttl, detail=detail)
            if about is not None and hold.charges and not self.postgres:
                # SQLite holds live in memory: journaled, so the next start charges them.
                self.writer.note_hold(hold.id, hold_line(hold.id, amount, [[b.id, s, amount] for b, s in hold.charges],
                                                         about))
        except SpendError:
            raise
        except Exception as exc:  # noqa: BLE001 (the shared database is down: refuse rather than spend unchecked)
            log.error("spend control cannot reach its database: %s", exc)
            raise SpendUnavailable("Spend control cannot reach its database, so the request was not sent. "
                                   "Retry shortly.", headers={"retry-after": "5"}) from None
        return Reservation(principal, model.name, max_cost_usd, token=hold)

    async def reinstate(
        self, principal: Principal, model: ModelInfo, *, max_cost_usd: float, ttl: float | None = None,
        hold_id: str | None = None,
    ) -> Reservation:
        """Hold ``max_cost_usd`` again for a request whose money is already committed and whose
        first hold died with the process that took it (a line in a provider's batch, after a
        gateway restart), so that it counts against its budgets again until it settles.

        Unlike :meth:`admit` it applies no rate limit and never refuses: the provider charges
        the request whatever the budget says, so the hold counts even when it takes a budget
        past its limit (logged), and later requests are refused instead. ``ttl`` (PostgreSQL)
        is how long the hold counts if it is never settled (default: ``hold_ttl``).
        """
        if principal.is_admin:
            return Reservation(principal, model.name, max_cost_usd)
        amount = usd_to_nanos(max_cost_usd, round_up=True)
        if amount < 0:
            raise ValueError(f"max_cost_usd must not be negative (got {max_cost_usd!r})")
        try:
            hold = await self._hold(
                self._snapshot, principal, amount, time.time(), force=True, ttl=ttl, hold_id=hold_id
            )
        except SpendError:
            raise
        except Exception as exc:  # noqa: BLE001 (the shared database is down: refuse rather than spend unchecked)
            log.error("spend control cannot reach its database: %s", exc)
            raise SpendUnavailable("Spend control cannot reach its database.") from None
        return Reservation(principal, model.name, max_cost_usd, token=hold)

    async def _hold(
        self, snap: Snapshot, principal: Principal, amount: int, now: float, *, force: bool = False,
        ttl: float | None = None, hold_id: str | None = None, detail: str | None = None,
    ) -> Hold:
        hold = Hold(hold_id or f"{self._hold_prefix}{next(self._hold_count):012x}", amount, detail=detail)
        for budget in snap.budgets_for(principal):
            if budget.period == "window":
                if budget.window_start is not None and now < budget.window_start:
                    continue
                if budget.window_end is not None and now >= budget.window_end and not force:
                    raise window_ended(budget)
            bounds = self._periods.get(budget.id)
            if bounds is None or bounds[0] != budget or (bounds[2] is not None and now >= bounds[2]) or now < bounds[1]:
                start, end = period_bounds(budget.period, now, budget.window_start, budget.window_end)
                self._periods[budget.id] = (budget, start, end)
            else:
                start, end = bounds[1], bounds[2]
            hold.charges.append((budget, start))
            hold.ends[budget.id] = end
        if force:
            await self.budgets.force(hold, ttl)
        else:
            await self.budgets.reserve(hold, ttl)
        return hold

    def _rate_checks(self, snap: Snapshot, principal: Principal, prompt_tokens: int) -> list[Check]:
        checks: list[Check] = []
        key = snap.keys_by_id.get(principal.key_id) if principal.key_id else None
        if key is not None:
            if key.rpm:
                checks.append(Check(f"key:{key.id}:rpm", key.rpm, 1, f"key {key.id} requests per minute"))
            if key.tpm:
                checks.append(Check(f"key:{key.id}:tpm", key.tpm, prompt_tokens, f"key {key.id} tokens per minute"))
        if principal.team_id is not None:
            rpm, tpm = snap.team_limits.get(principal.team_id, (None, None))
            team = principal.team_id
            if rpm:
                checks.append(Check(f"team:{team}:rpm", rpm, 1, f"team {team!r} requests per minute"))
            if tpm:
                checks.append(Check(f"team:{team}:tpm", tpm, prompt_tokens, f"team {team!r} tokens per minute"))
        return checks

    def _token_scopes(self, principal: Principal) -> list[str]:
        """The tokens-per-minute scopes that completion tokens count against."""
        snap = self._snapshot
        scopes = []
        key = snap.keys_by_id.get(principal.key_id) if principal.key_id else None
        if key is not None and key.tpm:
            scopes.append(f"key:{key.id}:tpm")
        if principal.team_id is not None and snap.team_limits.get(principal.team_id, (None, None))[1]:
            scopes.append(f"team:{principal.team_id}:tpm")
        return scopes

    async def settle(self, reservation: Reservation | None, record: LedgerRecord) -> None:
        hold = reservation.token if reservation is not None else None
        try:
            cost = usd_to_nanos(record.cost_usd)
        except (ValueError, TypeError, ArithmeticError):
            cost = -1
        if cost < 0:
            # Never drop the record: charge the most it could have cost.
            log.error("request %s settled with an invalid cost %r; charging its hold instead",
                      record.request_id, record.cost_usd)
            cost = hold.amount if isinstance(hold, Hold) else 0
            record.cost_usd = float(cost) / 1e9
        if reservation is not None:
            p = reservation.principal
            record.key_id = record.key_id or p.key_id
            record.user_id = record.user_id or p.user_id
            record.team_id = record.team_id or p.team_id
            record.tags = record.tags or p.tags
        fresh = isinstance(hold, Hold) and not hold.settled
        charges = [[b.id, s, cost] for b, s in hold.charges] if fresh else []
        entry = journal_entry(record, cost, charges, hold.id if isinstance(hold, Hold) else None)
        scopes = self._token_scopes(reservation.principal) if record.completion_tokens and reservation else []
        if scopes:
            now = time.time()
            if self.limiter.shared:  # counted in PostgreSQL by the ledger batch
                entry["rate_tokens"] = [[scope, int(now // 60), record.completion_tokens] for scope in scopes]
            else:
                for scope in scopes:
                    self.limiter.add(scope, record.completion_tokens, now)
        self.writer.submit(entry)
        if fresh:
            hold.settled = True
            self.budgets.settle(hold, cost)
            if cost > hold.amount:
                log.warning("request %s cost %d nano-USD, more than the %d held for it", record.request_id, cost,
                            hold.amount)

    async def recorded(self, request_ids: Sequence[str]) -> set[str]:
        """Which of ``request_ids`` the ledger holds (after this process's writes are flushed);
        for work that resumes after a restart and must not be billed twice or not at all."""
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return set()

        def query() -> set[str]:
            self.writer.flush()
            db = Database(self.db_url)  # its own connection: this runs in a worker thread
            try:
                found: set[str] = set()
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    marks = ", ".join("?" * len(chunk))
                    found.update(
                        r[0] for r in db.all(f"SELECT request_id FROM ledger WHERE request_id IN ({marks})", chunk)
                    )
                return found
            finally:
                db.close()

        return await asyncio.to_thread(query)

    def budget_usage(self) -> list[tuple[BudgetEntry, int]]:
        """Each budget with what its current period has spent (nano-USD), as the database says
        (settled requests; at most one ledger flush behind). For ``/metrics``: it opens its own
        connection, so it may run in a worker thread."""
        budgets = list(self._snapshot.budgets_by_id.values())
        if not budgets:
            return []
        now = time.time()
        db = Database(self.db_url)
        try:
            out = []
            for budget in budgets:
                start, _end = period_bounds(budget.period, now, budget.window_start, budget.window_end)
                row = db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ? AND period_start = ?",
                             (budget.id, start))
                out.append((budget, int(row[0]) if row else 0))
            return out
        finally:
            db.close()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every settled record is in the database (tests, reports, shutdown)."""
        self.writer.flush(timeout)

    async def close(self) -> None:
        self._stop.set()
        self.writer.close()
        if self.lease is not None:
            self.lease.close()
        await self.budgets.close()
        if self.pool is not None:
            await self.pool.close()
        self._watcher.join(timeout=5)
        self.db.close()
        if self._shared_db is not None:
            self._shared_db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _lock_sqlite(db_url: str, db_path: str, *, shared: bool) -> int:
    """Refuse to mix, on one SQLite file, a gateway that holds budgets in its memory (an
    exclusive lock) with any other gateway process; processes holding them in the file
    (``shared``: the workers of ``thrifty serve --workers N``) share the lock."""
    if db_path == ":memory:":
        return -1
    path = db_path + ".gateway-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        from thrifty.errors import UsageError

        raise UsageError(
            f"another gateway process already uses the SQLite spend database ({db_url}); budgets are exact "
            "across processes on SQLite only among the workers of one 'thrifty serve --workers N': stop "
            "the other gateway, or set spend.database_url to a postgresql:// URL to run several"
        ) from None
    return fd
