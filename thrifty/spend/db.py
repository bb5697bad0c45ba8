"""One thin, synchronous database handle over sqlite3 or psycopg 3.

SQL is written once with ``?`` placeholders and rewritten to ``%s`` for
PostgreSQL; the schema sticks to types both understand. Every handle is used
by one thread at a time (spend control gives each thread its own).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pathlib
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_url(path: pathlib.Path) -> str:
    return f"sqlite:///{path}"


def _sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` is relative, ``sqlite:////abs/x.db`` absolute (SQLAlchemy's rule)."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if url.startswith("sqlite:"):
        raise ValueError(f"bad SQLite URL {url!r}; use sqlite:///relative.db or sqlite:////absolute.db")
    return url  # a plain file path


class Database:
    """A connection plus the dialect facts callers need.

    ``queue_writes`` (SQLite): :meth:`transaction` first waits for an ``flock`` on
    ``<file>.write-lock``, shared by every handle opened so, in any process. The processes of
    ``thrifty serve --workers N`` write the file on every admitted request; queued on the
    flock, the next writer goes the moment the lock is free, where SQLite's busy handler would
    sleep 1 ms and more between retries (with the event loop blocked).
    """

    def __init__(self, url: str, *, queue_writes: bool = False) -> None:
        self.url = url
        self.postgres = is_postgres(url)
        self.path = "" if self.postgres else _sqlite_path(url)
        self._lock = threading.Lock()
        self._write_fd = -1
        if queue_writes and not self.postgres and self.path != ":memory:":
            self._write_fd = os.open(self.path + ".write-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self.postgres:
            import psycopg

            self._conn: Any = psycopg.connect(url, autocommit=True)
        else:
            path = _sqlite_path(url)
            if path != ":memory:":
                pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; our own
            # journal (fsynced in batches) covers power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self._conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self._conn.executemany(sql, rows)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """BEGIN (IMMEDIATE on SQLite: take the write lock up front) ... COMMIT or ROLLBACK."""
        with self._lock:
            if self.postgres:
                with self._conn.transaction():
                    yield self
            else:
                if self._write_fd >= 0:
                    fcntl.flock(self._write_fd, fcntl.LOCK_EX)
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                finally:
                    if self._write_fd >= 0:
                        fcntl.flock(self._write_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: S110, BLE001 (closing is best effort; the connection may already be broken)
            pass
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1


class AsyncPgPool:
    """A few psycopg async connections (autocommit) for the request path; made on first use.

    Fair: a released connection goes to the longest waiter, so a busy task
    cannot take it straight back and starve the others.
    """

    def __init__(self, url: str, size: int = 8) -> None:
        self._url = url
        self._size = size
        self._idle: list[Any] = []
        self._waiters: deque[asyncio.Future] = deque()
        self._made = 0

    async def _acquire(self) -> Any:
        import psycopg

        if self._idle and not self._waiters:
            return self._idle.pop()
        if self._made >= self._size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(waiter.result())
                raise
            if conn is not None:
                return conn
        # Below the size (or handed a slot freed by a broken connection): open one.
        self._made += 1
        try:
            return await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        except BaseException:
            self._release(None)
            raise

    def _release(self, conn: Any) -> None:
        """Give a connection (None: a freed slot, which the waiter fills) to the first waiter, else keep it."""
        if conn is None or conn.closed:
            self._made -= 1
            conn = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        conn = await self._acquire()
        try:
            yield conn
        except BaseException:
            import psycopg

            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.close()  # broken mid-transaction: open a fresh one next time
            raise
        finally:
            self._release(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        self._made = 0


def every(period: float, stop: threading.Event, url: str, step: Any, what: str) -> None:
    """Run ``step(db)`` every ``period`` seconds until ``stop`` is set, on a connection of this
    thread's own, opened again after any failure (a background thread logs and goes on)."""
    db: Database | None = None
    while not stop.wait(period):
        try:
            db = db or Database(url)
            step(db)
        except Exception as exc:  # noqa: BLE001 (a background thread: log, reconnect, go on)
            logging.getLogger("thrifty.spend").warning("%s failed: %s", what, exc)
            if db is not None:
                db.close()
            db = None
    if db is not None:
        db.close()
