"""Budget holds: reserve the most a request can cost, settle to what it did cost.

Three engines with one rule (spent + held + this request <= limit, else refuse):

* :class:`MemoryBudgets` (SQLite, one gateway process): counters in memory,
  exact because the event loop runs each check-and-hold without a break.
  Spent amounts start from the database's counters (after journal replay)
  and are then kept in memory.
* :class:`PostgresBudgets` (several processes sharing PostgreSQL): holds are
  rows in ``reservations``; a check is one call of a server-side function
  that locks the budget rows, then reads spent and held in one snapshot
  (admits for the same budgets that arrive meanwhile go in the next call). The ledger batcher turns a hold into spend in one
  transaction (insert record, add to counter, delete hold), so a check never
  sees a request twice or not at all. A request's hold names its replica (``owner``)
  and its request (``detail``): once that replica's lease lapses, another replica
  charges it in full (:mod:`thrifty.spend.leases`); holds with no detail expire.
* :class:`SqliteBudgets` (SQLite, the worker processes of ``thrifty serve --workers N``): the
  same rows, the same coalescing and the same ledger batch as PostgreSQL, each call one ``BEGIN
  IMMEDIATE`` transaction, so SQLite's single writer lock orders the workers' holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from thrifty.spend.contract import BudgetExceeded
from thrifty.spend.db import AsyncPgPool, Database
from thrifty.spend.money import format_usd
from thrifty.spend.periods import iso
from thrifty.spend.snapshot import BudgetEntry

log = logging.getLogger("thrifty.spend")


@dataclass(slots=True)
class Hold:
    """What one request holds: ``amount`` nano-dollars on each (budget, period)."""

    id: str
    amount: int
    charges: list[tuple[BudgetEntry, int]] = field(default_factory=list)  # (budget, period start)
    ends: dict[str, float | None] = field(default_factory=dict)
    settled: bool = False
    detail: str | None = None  # whose request (PostgreSQL): for the record if its replica dies


def refuse(budget: BudgetEntry, spent: int, held: int, amount: int, resets: float | None) -> BudgetExceeded:
    when = f"it resets at {iso(resets)}" if resets is not None and budget.period != "window" else (
        f"its window ends at {iso(resets)} and does not reset" if resets is not None else "it does not reset")
    exc = BudgetExceeded(
        f"Budget exceeded: the {budget.label()} is {format_usd(budget.limit_nanos)}; "
        f"{format_usd(spent)} is spent and {format_usd(held)} is held by requests in flight, "
        f"and this request could cost up to {format_usd(amount)}. The request was not sent; {when}.",
        headers={"x-thrifty-budget-id": budget.id, **({"x-thrifty-budget-reset": iso(resets)} if resets else {}),
                 **({"retry-after": str(max(1, int(resets - time.time())))} if resets and budget.period != "window" else {})},
    )
    exc.budget_id, exc.scope, exc.scope_id = budget.id, budget.scope, budget.scope_id
    exc.resets_at = iso(resets) if budget.period != "window" else None
    return exc


def window_ended(budget: BudgetEntry) -> BudgetExceeded:
    exc = BudgetExceeded(
        f"Budget exceeded: the {budget.label()} of {format_usd(budget.limit_nanos)} ended at "
        f"{iso(budget.window_end)}; no more requests are allowed under it.",
        headers={"x-thrifty-budget-id": budget.id},
    )
    exc.budget_id, exc.scope, exc.scope_id = budget.id, budget.scope, budget.scope_id
    return exc


class MemoryBudgets:
    def __init__(self, db: Database) -> None:
        self._db = db  # read once per (budget, period), on first use
        self._spent: dict[tuple[str, int], int] = {}
        self._held: dict[tuple[str, int], int] = {}

    def _spent_of(self, key: tuple[str, int]) -> int:
        spent = self._spent.get(key)
        if spent is None:
            row = self._db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ? AND period_start = ?", key)
            spent = self._spent[key] = int(row[0]) if row else 0
        return spent

    async def reserve(self, hold: Hold, ttl: float | None = None) -> None:
        """``ttl`` is PostgreSQL's: a hold in this process's memory counts until it is settled."""
        for budget, start in hold.charges:
            key = (budget.id, start)
            spent, held = self._spent_of(key), self._held.get(key, 0)
            if spent + held + hold.amount > budget.limit_nanos:
                raise refuse(budget, spent, held, hold.amount, hold.ends.get(budget.id))
        for budget, start in hold.charges:
            key = (budget.id, start)
            self._held[key] = self._held.get(key, 0) + hold.amount

    async def force(self, hold: Hold, ttl: float | None = None) -> None:
        """Take the hold without the limit check (money already committed upstream)."""
        for budget, start in hold.charges:
            key = (budget.id, start)
            spent, held = self._spent_of(key), self._held.get(key, 0)
            if spent + held + hold.amount > budget.limit_nanos:
                log.warning("reinstated hold %s takes the %s past its limit", hold.id, budget.label())
            self._held[key] = held + hold.amount

    def settle(self, hold: Hold, actual: int) -> None:
        for budget, start in hold.charges:
            key = (budget.id, start)
            self._held[key] -= hold.amount
            self._spent[key] = self._spent_of(key) + actual

    async def close(self) -> None:
        return None


class CoalescedHolds:
    """Holds in a shared database, with the admits for the same budgets coalesced into one call.

    While a call for a set of budgets is in flight, later admits for the same set queue up and
    go together in the next call (:meth:`_call`), which checks them one by one under the
    database's lock: as exact as one call per request, but a hot budget is locked once per
    batch. The ledger batch that records a request releases its hold (``release_reservations``).
    """

    def __init__(self, owner: str, *, hold_ttl: float = 3600.0) -> None:
        self._owner = owner
        self._ttl = hold_ttl
        self._waiting: dict[tuple, list[tuple[Hold, asyncio.Future]]] = {}
        self._busy: set[tuple] = set()

    async def reserve(self, hold: Hold, ttl: float | None = None) -> None:
        """``ttl``: how long the hold counts if never settled (default: ``hold_ttl``)."""
        if not hold.charges:
            return
        group = (tuple((b.id, start) for b, start in hold.charges), self._ttl if ttl is None else ttl)
        done = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(group, []).append((hold, done))
        if group not in self._busy:
            self._busy.add(group)
            asyncio.ensure_future(self._drain(group))
        refusal = await done
        if refusal is not None:
            raise refusal

    async def _drain(self, group: tuple) -> None:
        try:
            while self._waiting.get(group):
                batch = self._waiting.pop(group)
                try:
                    refused = await self._call(batch, group[1])
                except Exception as exc:  # noqa: BLE001 (every waiter must get the failure, whatever it is)
                    for _hold, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for hold, done in batch:
                    if hold.id in refused:
                        if not done.done():
                            done.set_result(refused[hold.id])
                    elif done.done():
                        # The admit was cancelled (client gone) but its hold was taken: give it back.
                        asyncio.ensure_future(self._release(hold.id))
                    else:
                        done.set_result(None)
        finally:
            self._busy.discard(group)

    async def _call(self, batch: list[tuple[Hold, asyncio.Future]], ttl: float) -> dict[str, BudgetExceeded]:
        """Take the holds of ``batch`` that fit, in order; the refusals of the others by hold id."""
        raise NotImplementedError

    async def _release(self, hold_id: str) -> None:
        raise NotImplementedError

    def settle(self, hold: Hold, actual: int) -> None:
        """Nothing to do now: the ledger batch that records the request releases its hold."""

    async def close(self) -> None:
        return None


class PostgresBudgets(CoalescedHolds):
    """Holds in PostgreSQL: each call is one ``thrifty_reserve_many``, which locks the budget
    rows, then checks the batch's holds one by one."""

    def __init__(self, pool: AsyncPgPool, owner: str, *, hold_ttl: float = 3600.0) -> None:
        super().__init__(owner, hold_ttl=hold_ttl)
        self._pool = pool

    async def _call(self, batch: list[tuple[Hold, asyncio.Future]], ttl: float) -> dict[str, BudgetExceeded]:
        charges = batch[0][0].charges
        now = time.time()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                # The details in binary: text-array quoting of JSON costs ~40 us a hold in Python.
                "SELECT * FROM thrifty_reserve_detailed(%s, %s, %b, %s, %s, %s, %s, %s)",
                ([h.id for h, _ in batch], [h.amount for h, _ in batch], [h.detail for h, _ in batch],
                 [b.id for b, _ in charges],
                 [s for _, s in charges], self._owner, now, now + ttl),
            )
            rows = await cur.fetchall()
        holds = {h.id: h for h, _ in batch}
        refused: dict[str, BudgetExceeded] = {}
        for hold_id, budget_id, limit, spent, held in rows:
            hold = holds[hold_id]
            budget = next(b for b, _ in hold.charges if b.id == budget_id)
            if budget.limit_nanos != limit:
                budget = _with_limit(budget, int(limit))
            refused[hold_id] = refuse(budget, int(spent), int(held), hold.amount, hold.ends.get(budget.id))
        return refused

    async def force(self, hold: Hold, ttl: float | None = None) -> None:
        """Insert the hold's rows without the limit check (money already committed upstream); a
        row of the same hold still there (taken again after a clean restart) is taken over."""
        if not hold.charges:
            return
        now = time.time()
        expires = now + (self._ttl if ttl is None else ttl)
        async with self._pool.connection() as conn:
            for budget, start in hold.charges:
                await conn.execute(
                    "INSERT INTO reservations (id, budget_id, period_start, amount_nanos, owner, expires_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id, budget_id)"
                    " DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at",
                    (hold.id, budget.id, start, hold.amount, self._owner, expires),
                )

    async def _release(self, hold_id: str) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute("DELETE FROM reservations WHERE id = %s", (hold_id,))
        except Exception as exc:  # noqa: BLE001 (it expires anyway)
            log.warning("could not release the hold of a cancelled request: %s", exc)



class SqliteBudgets(CoalescedHolds):
    """Holds as ``reservations`` rows of a SQLite file shared by the processes using it (the
    workers of ``thrifty serve --workers N``).

    Each call is one ``BEGIN IMMEDIATE`` transaction in a worker thread (the event loop never
    waits for the file's write lock): spent is ``budget_spend``, held is the unexpired holds,
    the limit is the ``budgets`` row as it is now; the batch's holds are checked in order, each
    against what the holds granted before it added.
    """

    def __init__(self, db: Database, owner: str, *, hold_ttl: float = 3600.0) -> None:
        super().__init__(owner, hold_ttl=hold_ttl)
        self._db = db

    async def _call(self, batch: list[tuple[Hold, asyncio.Future]], ttl: float) -> dict[str, BudgetExceeded]:
        return await asyncio.to_thread(self._reserve_many, [h for h, _ in batch], ttl, True)

    async def force(self, hold: Hold, ttl: float | None = None) -> None:
        """Take the hold without the limit check (money already committed upstream)."""
        if hold.charges:
            await asyncio.to_thread(self._reserve_many, [hold], self._ttl if ttl is None else ttl, False)

    def _reserve_many(self, holds: list[Hold], ttl: float, check: bool) -> dict[str, BudgetExceeded]:
        db, now = self._db, time.time()
        refused: dict[str, BudgetExceeded] = {}
        rows = []
        with db.transaction():
            state: dict[str, tuple[BudgetEntry, int, int, int]] = {}  # budget id -> budget, limit, spent, held
            for budget, start in holds[0].charges:
                limit = db.one("SELECT limit_nanos FROM budgets WHERE id = ?", (budget.id,))
                if limit is None:
                    continue  # deleted meanwhile: nothing to hold
                spent = db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ? AND period_start = ?",
                               (budget.id, start))
                held = db.one("SELECT COALESCE(SUM(amount_nanos), 0) FROM reservations"
                              " WHERE budget_id = ? AND period_start = ? AND expires_at > ?", (budget.id, start, now))
                state[budget.id] = (budget, int(limit[0]), int(spent[0]) if spent else 0, int(held[0]))
            for hold in holds:
                over = next((s for s in state.values() if check and s[2] + s[3] + hold.amount > s[1]), None)
                if over is not None:
                    budget, limit, spent, held = over
                    if budget.limit_nanos != limit:
                        budget = _with_limit(budget, limit)
                    refused[hold.id] = refuse(budget, spent, held, hold.amount, hold.ends.get(budget.id))
                    continue
                for bid, (budget, limit, spent, held) in state.items():
                    state[bid] = (budget, limit, spent, held + hold.amount)
                    start = next(s for b, s in hold.charges if b.id == bid)
                    rows.append((hold.id, bid, start, hold.amount, self._owner, now + ttl))
            db.executemany(
                "INSERT INTO reservations (id, budget_id, period_start, amount_nanos, owner, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id, budget_id)"
                " DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                rows,
            )
        return refused

    async def _release(self, hold_id: str) -> None:
        def delete() -> None:
            with self._db.transaction():
                self._db.execute("DELETE FROM reservations WHERE id = ?", (hold_id,))

        try:
            await asyncio.to_thread(delete)
        except Exception as exc:  # noqa: BLE001 (it expires anyway)
            log.warning("could not release the hold of a cancelled request: %s", exc)


def _with_limit(budget: BudgetEntry, limit: int) -> BudgetEntry:
    from dataclasses import replace

    return replace(budget, limit_nanos=limit)
