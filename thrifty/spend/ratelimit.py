"""Requests and tokens per minute, per key and per team.

A sliding window estimated from two fixed one-minute buckets (the previous
minute weighted by how much of it still overlaps the window): O(1) state per
scope and no 2x burst at a minute boundary. Prompt tokens count when a
request is admitted, completion tokens when it settles.

:class:`MemoryRateLimiter` keeps the buckets in this process (SQLite, one
gateway); :class:`PostgresRateLimiter` keeps them in PostgreSQL so that every
gateway sharing the database enforces one limit, with one server-side call
per admitted request (``thrifty_rate``, see :mod:`thrifty.spend.schema`);
:class:`SqliteRateLimiter` does the same in one SQLite write transaction, for the
worker processes of ``thrifty serve --workers N`` sharing a SQLite file.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, NamedTuple

from thrifty.spend.contract import RateLimited


class Check(NamedTuple):
    scope: str  # e.g. "key:key_ab12:rpm"
    limit: int
    amount: int  # 1 request, or the prompt's tokens
    label: str  # for the error message


def wait_seconds(previous: int, current: int, limit: int, amount: int, now: float) -> float | None:
    """Seconds until ``amount`` more fits under ``limit``, or None when it fits now."""
    elapsed = (now % 60) / 60
    used = previous * (1 - elapsed) + current
    if used + amount <= limit:
        return None
    if current + amount > limit:
        return 60 - now % 60  # only the next minute frees enough
    need = used + amount - limit  # the previous minute's weight decays linearly
    return max(1.0, math.ceil(need / max(previous, 1) * 60))


def too_many(check: Check, wait: float | None) -> RateLimited:
    if wait is None:  # a single request larger than the limit can never pass
        return RateLimited(f"Rate limit: this request's {check.amount} prompt tokens exceed the {check.label} "
                           f"limit of {check.limit}.")
    seconds = max(1, math.ceil(wait))
    return RateLimited(f"Rate limit exceeded: {check.label} limit is {check.limit}. Retry in {seconds} s.",
                       headers={"retry-after": str(seconds)})


class _Window:
    __slots__ = ("current", "minute", "previous")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.current = 0
        self.previous = 0

    def roll(self, minute: int) -> None:
        if minute != self.minute:
            self.previous = self.current if minute == self.minute + 1 else 0
            self.current = 0
            self.minute = minute


class MemoryRateLimiter:
    shared = False

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def _window(self, scope: str, now: float) -> _Window:
        minute = int(now // 60)
        window = self._windows.get(scope)
        if window is None:
            window = self._windows[scope] = _Window(minute)
        window.roll(minute)
        return window

    async def take(self, checks: list[Check], now: float) -> None:
        """Count the request against every check, or raise :class:`RateLimited` counting nothing."""
        refuse_oversized(checks)
        for check in checks:
            window = self._window(check.scope, now)
            wait = wait_seconds(window.previous, window.current, check.limit, check.amount, now)
            if wait is not None:
                raise too_many(check, wait)
        for check in checks:
            self._window(check.scope, now).current += check.amount

    def add(self, scope: str, amount: int, now: float) -> None:
        self._window(scope, now).current += amount


def refuse_oversized(checks: list[Check]) -> None:
    """A request larger than a whole minute's limit can never fit: refused without a wait."""
    for check in checks:
        if check.amount > check.limit:
            raise too_many(check, None)


class SqliteRateLimiter:
    """The windows as ``rate_windows`` rows of the shared SQLite file, checked and counted in one
    write transaction in a worker thread; completion tokens reach them with the ledger batch
    (``rate_tokens``), as on PostgreSQL."""

    shared = True

    def __init__(self, db: Any) -> None:
        self._db = db

    async def take(self, checks: list[Check], now: float) -> None:
        refuse_oversized(checks)
        if checks:
            await asyncio.to_thread(self._take, checks, now)

    def _take(self, checks: list[Check], now: float) -> None:
        minute = int(now // 60)
        db = self._db
        with db.transaction():
            for check in checks:
                current = db.one("SELECT used FROM rate_windows WHERE scope = ? AND minute = ?", (check.scope, minute))
                previous = db.one("SELECT used FROM rate_windows WHERE scope = ? AND minute = ?",
                                  (check.scope, minute - 1))
                wait = wait_seconds(int(previous[0]) if previous else 0, int(current[0]) if current else 0,
                                    check.limit, check.amount, now)
                if wait is not None:
                    raise too_many(check, wait)
            db.executemany(
                "INSERT INTO rate_windows (scope, minute, used) VALUES (?, ?, ?)"
                " ON CONFLICT (scope, minute) DO UPDATE SET used = rate_windows.used + excluded.used",
                [(c.scope, minute, c.amount) for c in checks],
            )

    def add(self, scope: str, amount: int, now: float) -> None:
        """Completion tokens reach the database with the ledger batch (see ``rate_tokens``)."""


class PostgresRateLimiter:
    shared = True

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def take(self, checks: list[Check], now: float) -> None:
        refuse_oversized(checks)
        if not checks:
            return
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM thrifty_rate(%s, %s, %s, %s, %s)",
                ([c.scope for c in checks], [c.limit for c in checks], [c.amount for c in checks],
                 int(now // 60), (now % 60) / 60),
            )
            row = await cur.fetchone()
        if row is not None:
            scope, previous, current = row
            check = next(c for c in checks if c.scope == scope)
            raise too_many(check, wait_seconds(int(previous), int(current), check.limit, check.amount, now) or 1.0)

    def add(self, scope: str, amount: int, now: float) -> None:
        """Completion tokens reach PostgreSQL with the ledger batch (see ``rate_tokens``)."""
