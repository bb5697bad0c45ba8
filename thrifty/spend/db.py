"""One thin, synchronous database handle over sqlite3 or psycopg 3.

SQL is written once with ``?`` placeholders and rewritten to ``%s`` for
PostgreSQL; the schema sticks to types both understand. Every handle is used
by one thread at a time (spend control gives each thread its own).
"""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Iterator, Sequence


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
    """A connection plus the dialect facts callers need."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = is_postgres(url)
        self.path = "" if self.postgres else _sqlite_path(url)
        self._lock = threading.Lock()
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
    def transaction(self) -> Iterator["Database"]:
        """BEGIN (IMMEDIATE on SQLite: take the write lock up front) ... COMMIT or ROLLBACK."""
        with self._lock:
            if self.postgres:
                with self._conn.transaction():
                    yield self
            else:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass


class AsyncPgPool:
    """A few psycopg async connections (autocommit) for the request path; made on first use."""

    def __init__(self, url: str, size: int = 8) -> None:
        self._url = url
        self._size = size
        self._idle: asyncio.Queue[Any] | None = None
        self._made = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        import psycopg

        if self._idle is None:
            self._idle = asyncio.Queue()
        if self._idle.empty() and self._made < self._size:
            self._made += 1
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            except BaseException:
                self._made -= 1
                raise
        else:
            conn = await self._idle.get()
        try:
            yield conn
        except BaseException:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.close()  # a broken connection: make a new one next time
            raise
        finally:
            if conn.closed:
                self._made -= 1
            else:
                self._idle.put_nowait(conn)

    async def close(self) -> None:
        while self._idle is not None and not self._idle.empty():
            await self._idle.get_nowait().close()
        self._made = 0
