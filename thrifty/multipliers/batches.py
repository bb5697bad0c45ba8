"""Batch deferral: OpenAI-compatible ``/v1/files`` and ``/v1/batches``.

A client uploads a JSONL file of requests (``{"custom_id", "method": "POST", "url", "body"}``
per line) and creates a batch; it gets back the OpenAI batch object and later an output file
of ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`` lines.

Everything is in the spend database, beside the ledger (SQLite, or PostgreSQL shared by
replicas): files, batches, and one row per request line with its result. The
:class:`BatchRunner` works through pending lines with an ``Executor`` (the gateway's own
pipeline, priced at batch prices), marks each line done (with what billing it takes) before it
is billed, and resumes every unfinished batch it holds, so a batch survives a gateway restart.
With replicas, each batch is held by one runner under a lease it renews; when a replica dies,
another takes its batches once the lease ends and resumes them. Each line is executed with a
deterministic request id (``batch_<batch id>_<line>``): the ledger ignores a request id it
already has, and a line answered but not billed when its runner died is billed from what was
stored with it, so no line is billed twice or not at all.

Files and batches belong to the caller's scope (team, else key): no tenant can list, read
or cancel another's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from thrifty.errors import GatewayError, ThriftyError, openai_error
from thrifty.spend.db import Database
from thrifty.spend.schema import migrate

log = logging.getLogger("thrifty.batches")

__all__ = ["BatchError", "BatchRunner", "BatchStore", "Executor", "line_request_id"]

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
WINDOWS = ("24h",)
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_LINES = 50_000
DONE = ("completed", "failed", "expired", "cancelled")
#: The longest wait between two attempts at a submission a provider failed transiently (the
#: waits double from the runner's ``poll``: poll, 2 poll, 4 poll, ... up to this).
BACKOFF_MAX = 300.0

# (principal fields, endpoint, request body, request id) -> (HTTP status, response body)
Executor = Callable[
    [dict[str, Any], str, dict[str, Any], str], Awaitable[tuple[int, dict[str, Any]]]
]
# line -> (HTTP status, response body): the lines a provider batch step settled
LineResults = dict[int, tuple[int, dict[str, Any]]]


class BatchError(GatewayError):
    """A refused files/batches request, rendered in OpenAI's error format; its ``code`` is
    ``invalid_request`` unless the raiser names one."""

    code = "invalid_request"


def _why(exc: BaseException) -> str:
    """An exception for a log line: its type and HTTP status if any (never a body: it could
    quote a prompt)."""
    status = getattr(exc, "status", None)
    return type(exc).__name__ + (f" HTTP {status}" if status else "")


def line_request_id(batch_id: str, line: int) -> str:
    return f"{batch_id}_{line}"


#: Batch statuses the runner still works on.
UNFINISHED = ("in_progress", "finalizing", "cancelling")
_UNFINISHED_SQL = "('in_progress', 'finalizing', 'cancelling')"


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class BatchStore:
    """Files, batches and their lines in the spend database (SQLite or PostgreSQL; tables of
    the spend schema's migration 5), so that every replica on one PostgreSQL database sees the
    same batches. Calls are short and run in one worker thread on the store's own connection,
    so the event loop never waits on the database.

    ``database`` is the spend database: its URL (``sqlite:///...``, ``postgresql://...``, or a
    plain SQLite file path) or a :class:`~thrifty.spend.db.Database` (whose URL is used: a
    ``Database`` serves one thread at a time, and this store has its own)."""

    def __init__(self, database: str | Path | Database) -> None:
        self.url = database.url if isinstance(database, Database) else str(database)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thrifty-batches")
        self._db: Database = self._pool.submit(self._connect).result()
        #: Several processes may run batches (PostgreSQL): leases decide which runs which. On
        #: SQLite one process owns the database (the spend control's lock), so leases do not apply.
        self.shared = self._db.postgres

    def _connect(self) -> Database:
        db = Database(self.url)
        if not db.postgres:
            # Per connection: a finished line must survive power loss (it was billed).
            db.execute("PRAGMA synchronous=FULL")
        migrate(db)
        return db

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._pool.shutdown(wait=True)

    # -- files ---------------------------------------------------------------------------

    @staticmethod
    def _file_obj(row: tuple) -> dict[str, Any]:
        fid, purpose, filename, size, created = row
        return {
            "id": fid,
            "object": "file",
            "bytes": int(size),
            "created_at": int(created),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }

    async def create_file(
        self, owner: str, purpose: str, filename: str, content: bytes
    ) -> dict[str, Any]:
        if purpose != "batch":  # batch_output files are written by the runner, not uploaded
            raise BatchError(
                400,
                f"Invalid purpose {purpose!r}: this gateway stores files for 'batch' only.",
                param="purpose",
            )
        if len(content) > MAX_FILE_BYTES:
            raise BatchError(413, f"File is larger than {MAX_FILE_BYTES} bytes.", param="file")
        fid, now = _new_id("file-"), int(time.time())

        def put() -> None:
            self._db.execute(
                "INSERT INTO batch_files (id, owner, purpose, filename, bytes, created_at, content)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fid, owner, purpose, filename, len(content), now, bytes(content)),
            )

        await self._run(put)
        return self._file_obj((fid, purpose, filename, len(content), now))

    async def _owned_file(self, owner: str, file_id: str, columns: str) -> tuple[Any, ...]:
        """``columns`` of the caller's file ``file_id``; another owner's file is not found."""
        row = await self._run(
            self._db.one,
            f"SELECT {columns} FROM batch_files WHERE id = ? AND owner = ?",
            (file_id, owner),
        )
        if row is None:
            raise BatchError(
                404, f"No such File object: {file_id}", code="not_found", param="file_id"
            )
        return row

    async def get_file(self, owner: str, file_id: str) -> dict[str, Any]:
        return self._file_obj(
            await self._owned_file(owner, file_id, "id, purpose, filename, bytes, created_at")
        )

    async def file_content(self, owner: str, file_id: str) -> bytes:
        return bytes((await self._owned_file(owner, file_id, "content"))[0])

    async def list_files(self, owner: str) -> list[dict[str, Any]]:
        rows = await self._run(
            self._db.all,
            "SELECT id, purpose, filename, bytes, created_at FROM batch_files WHERE owner = ?"
            " ORDER BY created_at DESC, id",
            (owner,),
        )
        return [self._file_obj(r) for r in rows]

    async def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        await self.get_file(owner, file_id)
        await self._run(
            self._db.execute, "DELETE FROM batch_files WHERE id = ? AND owner = ?", (file_id, owner)
        )
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches -------------------------------------------------------------------------

    async def create_batch(
        self,
        owner: str,
        principal: dict[str, Any],
        input_file_id: Any,
        endpoint: Any,
        completion_window: Any,
        metadata: Any = None,
    ) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise BatchError(
                400,
                f"Invalid endpoint {endpoint!r}: supported are {', '.join(ENDPOINTS)}.",
                param="endpoint",
            )
        if completion_window not in WINDOWS:
            raise BatchError(
                400,
                f"Invalid completion_window {completion_window!r}: supported is '24h'.",
                param="completion_window",
            )
        if metadata is not None and not isinstance(metadata, dict):
            raise BatchError(400, "Invalid metadata: expected an object.", param="metadata")
        if not isinstance(input_file_id, str):
            raise BatchError(
                400, "Missing required parameter: 'input_file_id'.", param="input_file_id"
            )
        lines = _parse_lines(await self.file_content(owner, input_file_id), endpoint)
        bid, now = _new_id("batch_"), int(time.time())

        def put() -> None:
            with self._db.transaction() as db:
                db.execute(
                    "INSERT INTO batches (id, owner, principal, endpoint, input_file_id, completion_window, status,"
                    " created_at, in_progress_at, expires_at, total, metadata)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'in_progress', ?, ?, ?, ?, ?)",
                    (
                        bid,
                        owner,
                        orjson.dumps(principal).decode(),
                        endpoint,
                        input_file_id,
                        completion_window,
                        now,
                        now,
                        now + 24 * 3600,
                        len(lines),
                        orjson.dumps(metadata).decode(),
                    ),
                )
                db.executemany(
                    "INSERT INTO batch_lines (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                    [
                        (bid, i, cid, orjson.dumps(body).decode())
                        for i, (cid, body) in enumerate(lines)
                    ],
                )

        await self._run(put)
        return await self.get_batch(owner, bid)

    def _batch_row(self, batch_id: str, owner: str | None) -> tuple | None:
        sql = (
            "SELECT id, endpoint, input_file_id, completion_window, status, created_at, in_progress_at,"
            " finalizing_at, completed_at, cancelling_at, cancelled_at, expires_at, output_file_id,"
            " error_file_id, total, metadata FROM batches WHERE id = ?"
        )
        args: tuple = (batch_id,)
        if owner is not None:
            sql += " AND owner = ?"
            args += (owner,)
        row = self._db.one(sql, args)
        if row is None:
            return None
        counts = self._db.one(
            "SELECT count(status_code), sum(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END)"
            " FROM batch_lines WHERE batch_id = ?",
            (batch_id,),
        )
        return tuple(row) + (int(counts[0] or 0), int(counts[1] or 0))

    @staticmethod
    def _batch_obj(row: tuple) -> dict[str, Any]:
        (
            bid,
            endpoint,
            input_file_id,
            window,
            status,
            created,
            in_progress,
            finalizing,
            completed,
            cancelling,
            cancelled,
            expires,
            output,
            error,
            total,
            metadata,
            done,
            failed,
        ) = row
        return {
            "id": bid,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": window,
            "status": status,
            "output_file_id": output,
            "error_file_id": error,
            "created_at": created,
            "in_progress_at": in_progress,
            "expires_at": expires,
            "finalizing_at": finalizing,
            "completed_at": completed,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": cancelling,
            "cancelled_at": cancelled,
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
            "metadata": orjson.loads(metadata) if metadata else None,
        }

    async def get_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        row = await self._run(self._batch_row, batch_id, owner)
        if row is None:
            raise BatchError(
                404, f"No batch found with id '{batch_id}'.", code="not_found", param="batch_id"
            )
        return self._batch_obj(row)

    async def list_batches(self, owner: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self._run(
            self._db.all,
            "SELECT id FROM batches WHERE owner = ? ORDER BY created_at DESC, id LIMIT ?",
            (owner, limit),
        )
        return [await self.get_batch(owner, r[0]) for r in rows]

    async def cancel_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        batch = await self.get_batch(owner, batch_id)
        if batch["status"] in DONE:
            raise BatchError(
                409, f"Cannot cancel a batch with status '{batch['status']}'.", code="conflict"
            )
        await self._run(
            self._db.execute,
            "UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ? AND status = 'in_progress'",
            (int(time.time()), batch_id),
        )
        return await self.get_batch(owner, batch_id)

    # -- the runner's side -----------------------------------------------------------------

    async def unfinished(self) -> list[str]:
        rows = await self._run(
            self._db.all,
            f"SELECT id FROM batches WHERE status IN {_UNFINISHED_SQL} ORDER BY created_at, id",
        )
        return [r[0] for r in rows]

    async def claim(self, runner: str, lease: float) -> list[str]:
        """The unfinished batches runner ``runner`` holds, oldest first, after taking those no
        runner holds or whose holder's lease ended (it died, or lost the database for longer
        than a lease): each held until ``lease`` seconds from now (see :meth:`renew`). On
        SQLite (one process) every unfinished batch."""
        if not self.shared:
            return await self.unfinished()

        def work() -> list[str]:
            now = time.time()
            # One statement: two runners claiming at once cannot both take a batch (the row
            # lock makes the second re-check the lease the first just took).
            self._db.execute(
                "UPDATE batches SET lease_owner = ?, lease_expires = ?"
                f" WHERE status IN {_UNFINISHED_SQL}"
                " AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires < ?)",
                (runner, now + lease, runner, now),
            )
            return [
                r[0]
                for r in self._db.all(
                    f"SELECT id FROM batches WHERE lease_owner = ? AND status IN {_UNFINISHED_SQL}"
                    " ORDER BY created_at, id",
                    (runner,),
                )
            ]

        return await self._run(work)

    async def renew(self, runner: str, lease: float) -> set[str]:
        """Extend the leases ``runner`` holds to ``lease`` seconds from now; the batches it still
        holds (a batch another runner took meanwhile is not among them)."""
        if not self.shared:
            return set(await self.unfinished())

        def work() -> set[str]:
            self._db.execute(
                "UPDATE batches SET lease_expires = ?"
                f" WHERE lease_owner = ? AND status IN {_UNFINISHED_SQL}",
                (time.time() + lease, runner),
            )
            return {
                r[0]
                for r in self._db.all(
                    f"SELECT id FROM batches WHERE lease_owner = ? AND status IN {_UNFINISHED_SQL}",
                    (runner,),
                )
            }

        return await self._run(work)

    async def release(self, runner: str) -> None:
        """Give up ``runner``'s leases now (a clean shutdown): another runner takes the batches
        on its next pass instead of after the lease."""
        if self.shared:
            await self._run(
                self._db.execute,
                "UPDATE batches SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ?",
                (runner,),
            )

    async def batch_job(self, batch_id: str) -> tuple[str, str, dict[str, Any]]:
        """(status, endpoint, principal) for the runner."""
        row = await self._run(
            self._db.one, "SELECT status, endpoint, principal FROM batches WHERE id = ?", (batch_id,)
        )
        return row[0], row[1], orjson.loads(row[2])

    async def pending(self, batch_id: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Unfinished lines not handed to a provider's batch API (nor being handed to one)."""
        rows = await self._run(
            self._db.all,
            "SELECT line, body FROM batch_lines WHERE batch_id = ? AND status_code IS NULL AND upstream IS NULL"
            " AND submission IS NULL ORDER BY line LIMIT ?",
            (batch_id, limit),
        )
        return [(line, orjson.loads(body)) for line, body in rows]

    async def begin_submission(
        self, batch_id: str, provider: str, lines: list[int], holds: dict[int, str | None]
    ) -> str:
        """Record (durably, before any upstream call) that ``lines`` are about to be sent to
        ``provider``'s batch API, with the budget hold each one took; the submission's tag
        (``thrifty-<batch id>-<attempt>``), which goes into the provider batch's metadata and
        its input file's name so that a restart can find out whether the provider has it."""

        def work() -> str:
            with self._db.transaction() as db:
                (n,) = db.one("SELECT count(*) FROM batch_submissions WHERE batch_id = ?", (batch_id,))
                tag = f"thrifty-{batch_id}-{int(n) + 1}"
                db.execute(
                    "INSERT INTO batch_submissions (tag, batch_id, provider, created_at) VALUES (?, ?, ?, ?)",
                    (tag, batch_id, provider, time.time()),
                )
                db.executemany(
                    "UPDATE batch_lines SET submission = ?, hold = ? WHERE batch_id = ? AND line = ?",
                    [(tag, holds.get(line), batch_id, line) for line in lines],
                )
            return tag

        return await self._run(work)

    async def submission_file(self, tag: str, file_id: str) -> None:
        """The input file uploaded for submission ``tag`` (to delete it if no batch is made of it)."""
        await self._run(
            self._db.execute, "UPDATE batch_submissions SET file_id = ? WHERE tag = ?", (file_id, tag)
        )

    async def submitting(self, batch_id: str) -> list[dict[str, Any]]:
        """Submissions recorded but whose provider batch id is not known (the process died or
        an upstream call failed in between): each with its unfinished ``lines`` ((line, body))."""

        def work() -> list[dict[str, Any]]:
            out = []
            for tag, provider, created, file_id in self._db.all(
                "SELECT tag, provider, created_at, file_id FROM batch_submissions WHERE batch_id = ?"
                " AND upstream_id IS NULL ORDER BY created_at",
                (batch_id,),
            ):
                rows = self._db.all(
                    "SELECT line, body FROM batch_lines WHERE batch_id = ? AND submission = ?"
                    " AND status_code IS NULL AND upstream IS NULL ORDER BY line",
                    (batch_id, tag),
                )
                if rows:
                    out.append(
                        {
                            "tag": tag,
                            "provider": provider,
                            "created_at": created,
                            "file_id": file_id,
                            "lines": [(line, orjson.loads(body)) for line, body in rows],
                        }
                    )
            return out

        return await self._run(work)

    async def submitted(
        self, tag: str, provider: str, upstream_id: str, expires_at: float | None
    ) -> None:
        """The provider has submission ``tag`` as batch ``upstream_id``: its lines wait on it
        (a restart polls it again), in one transaction."""

        def work() -> None:
            with self._db.transaction() as db:
                db.execute(
                    "UPDATE batch_submissions SET upstream_id = ?, expires_at = ? WHERE tag = ?",
                    (upstream_id, expires_at, tag),
                )
                db.execute(
                    "UPDATE batch_lines SET upstream = ? WHERE submission = ? AND upstream IS NULL",
                    (f"{provider}|{upstream_id}", tag),
                )

        await self._run(work)

    async def assign_upstream(
        self, batch_id: str, lines: list[int], tag: str, holds: dict[int, str] | None = None
    ) -> None:
        """Record that ``lines`` went to a provider's batch ``tag`` (``provider|upstream id``),
        with the budget hold each one took (the runner records a submission before it is sent
        instead: :meth:`begin_submission`, :meth:`submitted`)."""
        holds = holds or {}

        def work() -> None:
            with self._db.transaction() as db:
                db.executemany(
                    "UPDATE batch_lines SET upstream = ?, hold = ? WHERE batch_id = ? AND line = ?",
                    [(tag, holds.get(line), batch_id, line) for line in lines],
                )

        await self._run(work)

    async def upstream_holds(self, batch_id: str) -> list[tuple[int, str | None, float | None]]:
        """(line, hold, window end) of the lines waiting on a provider's batch or being sent to
        one; the window end is when the provider's batch expires (its ``expires_at``, else
        24 h after the submission was recorded), None while it may still be sent."""
        rows = await self._run(
            self._db.all,
            "SELECT l.line, l.hold, CASE WHEN l.upstream IS NULL THEN NULL"
            " ELSE coalesce(s.expires_at, s.created_at + 86400) END"
            " FROM batch_lines l LEFT JOIN batch_submissions s ON s.tag = l.submission"
            " WHERE l.batch_id = ? AND l.status_code IS NULL"
            " AND (l.upstream IS NOT NULL OR l.submission IS NOT NULL) ORDER BY l.line",
            (batch_id,),
        )
        return [tuple(r) for r in rows]

    async def upstream_pending(self, batch_id: str) -> dict[str, list[tuple[int, dict[str, Any]]]]:
        rows = await self._run(
            self._db.all,
            "SELECT upstream, line, body FROM batch_lines WHERE batch_id = ? AND status_code IS NULL"
            " AND upstream IS NOT NULL ORDER BY line",
            (batch_id,),
        )
        out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for tag, line, body in rows:
            out.setdefault(tag, []).append((line, orjson.loads(body)))
        return out

    async def unfinished_count(self, batch_id: str) -> int:
        row = await self._run(
            self._db.one,
            "SELECT count(*) FROM batch_lines WHERE batch_id = ? AND status_code IS NULL",
            (batch_id,),
        )
        return int(row[0])

    async def finish_line(
        self,
        batch_id: str,
        line: int,
        status: int,
        response: dict[str, Any],
        settle: str | None = None,
    ) -> None:
        """Mark the line done with its answer (durably). ``settle`` is what billing the line
        takes (its ledger record and hold), stored when the line is marked done before it is
        billed, so that a restart in between bills it (see ``BatchRunner.restore``)."""
        await self._run(
            self._db.execute,
            "UPDATE batch_lines SET status_code = ?, response = ?, settle = ?"
            " WHERE batch_id = ? AND line = ?",
            (status, orjson.dumps(response).decode(), settle, batch_id, line),
        )

    async def finish_lines(
        self, batch_id: str, results: dict[int, tuple[int, dict[str, Any], str | None]]
    ) -> None:
        """Mark ``{line: (status, response, settle)}`` done in one transaction (durably), each
        with what billing it takes (see :meth:`finish_line`)."""

        def work() -> None:
            with self._db.transaction() as db:
                db.executemany(
                    "UPDATE batch_lines SET status_code = ?, response = ?, settle = ?"
                    " WHERE batch_id = ? AND line = ?",
                    [
                        (status, orjson.dumps(response).decode(), settle, batch_id, line)
                        for line, (status, response, settle) in results.items()
                    ],
                )

        await self._run(work)

    async def unsettled(self, batch_id: str) -> list[tuple[int, str]]:
        """(line, settle) of done lines whose billing was stored with them (and not yet found
        in the ledger by a restart)."""
        rows = await self._run(
            self._db.all,
            "SELECT line, settle FROM batch_lines WHERE batch_id = ? AND status_code IS NOT NULL"
            " AND settle IS NOT NULL ORDER BY line",
            (batch_id,),
        )
        return [tuple(r) for r in rows]

    async def settled(self, batch_id: str, lines: list[int]) -> None:
        """Forget the stored billing of ``lines``: the ledger has them."""

        def work() -> None:
            with self._db.transaction() as db:
                db.executemany(
                    "UPDATE batch_lines SET settle = NULL WHERE batch_id = ? AND line = ?",
                    [(batch_id, line) for line in lines],
                )

        await self._run(work)

    async def finalize(self, batch_id: str) -> None:
        """Write the output and error files and close the batch (cancelled if it was cancelling);
        once (a batch already closed, say by another replica, is left as it is)."""

        def work() -> None:
            owner, status = self._db.one(
                "SELECT owner, status FROM batches WHERE id = ?", (batch_id,)
            )
            if status not in UNFINISHED:
                return
            out, err = [], []
            for line, cid, code, resp in self._db.all(
                "SELECT line, custom_id, status_code, response FROM batch_lines WHERE batch_id = ?"
                " AND status_code IS NOT NULL ORDER BY line",
                (batch_id,),
            ):
                body = orjson.loads(resp)
                rid = line_request_id(batch_id, line)
                record = {
                    "id": f"batch_req_{rid}",
                    "custom_id": cid,
                    "response": {"status_code": code, "request_id": rid, "body": body},
                    "error": None,
                }
                (out if code < 400 else err).append(orjson.dumps(record))
            now = int(time.time())
            ids: list[str | None] = []
            with self._db.transaction() as db:
                final = "cancelled" if status == "cancelling" else "completed"
                # Claim the close first: of two runners finalizing at once, one writes the files.
                closed = db.execute(
                    f"UPDATE batches SET status = ?, finalizing_at = ?,"
                    f" {'cancelled_at' if final == 'cancelled' else 'completed_at'} = ?"
                    f" WHERE id = ? AND status IN {_UNFINISHED_SQL}",
                    (final, now, now, batch_id),
                ).rowcount
                if closed != 1:
                    return
                for name, rows in (("output", out), ("errors", err)):
                    if not rows:
                        ids.append(None)
                        continue
                    fid = _new_id("file-")
                    content = b"\n".join(rows) + b"\n"
                    db.execute(
                        "INSERT INTO batch_files (id, owner, purpose, filename, bytes, created_at, content)"
                        " VALUES (?, ?, 'batch_output', ?, ?, ?, ?)",
                        (fid, owner, f"{batch_id}_{name}.jsonl", len(content), now, content),
                    )
                    ids.append(fid)
                # Every line that ran was billed (journaled) before the batch got here.
                db.execute(
                    "UPDATE batch_lines SET settle = NULL WHERE batch_id = ? AND settle IS NOT NULL",
                    (batch_id,),
                )
                db.execute(
                    "UPDATE batches SET output_file_id = ?, error_file_id = ?, lease_owner = NULL,"
                    " lease_expires = NULL WHERE id = ?",
                    (ids[0], ids[1], batch_id),
                )

        await self._run(work)

def _parse_lines(content: bytes, endpoint: str) -> list[tuple[str, dict[str, Any]]]:
    """Validate the input JSONL; a bad line refuses the whole batch with its line number."""
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for n, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BatchError(
                400, f"Line {n} of the input file is not valid JSON.", param="input_file_id"
            ) from None
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("custom_id"), str)
            or not isinstance(doc.get("body"), dict)
        ):
            raise BatchError(
                400,
                f"Line {n} of the input file needs a string 'custom_id' and an object 'body'.",
                param="input_file_id",
            )
        if doc.get("method", "POST") != "POST" or doc.get("url", endpoint) != endpoint:
            raise BatchError(
                400,
                f"Line {n} of the input file must be a POST to {endpoint} (the batch's endpoint).",
                param="input_file_id",
            )
        if doc["custom_id"] in seen:
            raise BatchError(
                400, f"Line {n}: duplicate custom_id {doc['custom_id']!r}.", param="input_file_id"
            )
        seen.add(doc["custom_id"])
        out.append((doc["custom_id"], doc["body"]))
        if len(out) > MAX_LINES:
            raise BatchError(
                400, f"The input file has more than {MAX_LINES} requests.", param="input_file_id"
            )
    if not out:
        raise BatchError(400, "The input file has no requests.", param="input_file_id")
    return out


class BatchRunner:
    """Works through the unfinished batches it holds in the background, ``concurrency`` lines
    at a time.

    Replicas on one PostgreSQL database each run one: a runner holds a batch under a lease of
    ``lease`` seconds that it renews every third of a lease while it lives, and takes batches
    nobody holds or whose lease ended (their runner died) on each pass. A batch it takes over
    is restored first (see :meth:`restore`). On SQLite (one process) it runs every batch."""

    def __init__(
        self,
        store: BatchStore,
        executor: Executor,
        *,
        concurrency: int = 4,
        poll: float = 1.0,
        lease: float = 60.0,
    ) -> None:
        self.store = store
        self.executor = executor
        self.concurrency = concurrency
        self.poll = poll
        self.lease = lease
        #: This runner's name in the batches' leases (one per process and runner).
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._renewer: asyncio.Task | None = None
        self._restored = False
        self._held: set[str] = set()  # batches this runner holds and has restored
        # Submissions a provider failed transiently: tag -> (failures, next attempt (monotonic)).
        self._backoff: dict[str, tuple[int, float]] = {}

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._loop(), name="thrifty-batch-runner")
            if self.store.shared:
                self._renewer = loop.create_task(self._renew(), name="thrifty-batch-leases")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        for task in (self._task, self._renewer):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._task is not None:
            try:  # another replica resumes them at once instead of after the lease
                await self.store.release(self.runner_id)
            except Exception:  # noqa: BLE001 (the leases end by themselves)
                log.warning("could not release the batch leases of runner %s", self.runner_id)
        self._task = self._renewer = None
        self._held.clear()
        close = getattr(getattr(self.executor, "upstream", None), "close", None)
        if close is not None:  # the provider batch APIs' pooled connections
            close()

    async def _renew(self) -> None:
        """Keep this runner's leases while it lives, however long a pass takes."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                held = await self.store.renew(self.runner_id, self.lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (retried; a lease outlives a few misses)
                log.warning("could not renew the batch leases: %s", _why(exc))
                continue
            lost = self._held - held
            if lost:  # another runner took them (this one was cut off for a whole lease)
                log.warning("batch runner %s lost the lease of %s", self.runner_id, ", ".join(sorted(lost)))
                self._held -= lost

    async def claim(self) -> list[str]:
        """The batches this runner holds now, after taking the free ones; a batch it did not
        hold before is restored (its stored lines billed, its provider holds taken) before it
        is run."""
        ids = await self.store.claim(self.runner_id, self.lease)
        for batch_id in ids:
            if batch_id not in self._held:
                await self._restore_batch(batch_id)
                self._held.add(batch_id)
        self._held &= set(ids)
        return ids

    async def restore(self) -> None:
        """Before the first pass: take the batches to resume and restore them: bill the lines
        that were answered and marked done but whose ledger record the dying process may not
        have written (the ledger says which), and take again the budget holds of lines waiting
        on a provider's batch (they died with the process that took them, and the provider
        charges those lines whatever happens). The gateway calls this at start-up before it
        serves requests, so no new request can take the room these lines hold; the runner
        calls it on its first pass otherwise. Once; batches taken over later (their runner
        died) are restored when they are taken."""
        if self._restored:
            return
        self._restored = True
        try:
            await self.claim()
        except Exception:
            log.exception("could not restore the batches' holds and billing")

    async def _restore_batch(self, batch_id: str) -> None:
        upstream = getattr(self.executor, "upstream", None)
        settle_stored = getattr(self.executor, "settle_stored", None)
        principal = (await self.store.batch_job(batch_id))[2]
        if settle_stored is not None:
            # Lines answered and marked done, but maybe not billed when the process died.
            try:
                stored = await self.store.unsettled(batch_id)
                if stored:
                    rids = {line: line_request_id(batch_id, line) for line, _ in stored}
                    await settle_stored(principal, [(rids[line], s) for line, s in stored])
                    await self.store.settled(batch_id, [line for line, _ in stored])
            except Exception:  # retried at the next start; the lines stay done
                log.exception("could not bill the stored lines of batch %s", batch_id)
        if upstream is not None and hasattr(upstream, "restore"):
            try:
                lines = await self.store.upstream_holds(batch_id)
                if lines:
                    await upstream.restore(batch_id, principal, lines)
            except Exception:  # the lines still settle (and charge budgets) when they finish
                log.exception("could not reinstate the holds of batch %s", batch_id)

    async def _loop(self) -> None:
        await self.restore()
        while True:
            try:
                for batch_id in await self.claim():
                    if batch_id in self._held:
                        await self.run_batch(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch runner pass failed; retrying")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                pass

    async def run_batch(self, batch_id: str) -> None:
        """One pass: hand lines to provider batch APIs, run the rest, collect finished provider
        batches; finalize once no line is left (provider batches may take several passes)."""
        status, endpoint, principal = await self.store.batch_job(batch_id)
        upstream = getattr(self.executor, "upstream", None)
        unresolved = False  # submissions whose fate at the provider is not known yet
        if upstream is not None and hasattr(upstream, "prepare"):
            # Submissions recorded before their upstream calls but with no provider batch id
            # stored: ask the provider whether it has them before anything is sent again.
            for sub in await self.store.submitting(batch_id):
                retry = self._backoff.get(sub["tag"])
                if retry is not None and time.monotonic() < retry[1]:
                    unresolved = True  # the provider failed it lately: wait (backoff)
                    continue
                ok = await self._submit(batch_id, endpoint, principal, sub, status, fresh=False)
                unresolved = unresolved or not ok
            if status == "in_progress":
                lines = await self.store.pending(batch_id, 1 << 30)
                groups = await upstream.prepare(batch_id, endpoint, principal, lines)
                for provider, items in groups.items():
                    numbers = [line for line, _ in items]
                    holds = {
                        line: upstream.describe_hold(line_request_id(batch_id, line))
                        for line in numbers
                    }
                    # Durable intent first: a crash from here on leaves a tag to look for.
                    tag = await self.store.begin_submission(batch_id, provider, numbers, holds)
                    sub = {"tag": tag, "provider": provider, "file_id": None, "lines": items}
                    sub["created_at"] = time.time()
                    ok = await self._submit(batch_id, endpoint, principal, sub, status, fresh=True)
                    unresolved = unresolved or not ok
        elif status == "in_progress" and upstream is not None:  # an executor of the old shape
            lines = await self.store.pending(batch_id, 1 << 30)
            for tag, items in (await upstream.submit(batch_id, endpoint, principal, lines)).items():
                describe = getattr(upstream, "describe_hold", None)
                holds = (
                    {line: describe(line_request_id(batch_id, line)) for line, _ in items}
                    if describe
                    else None
                )
                await self.store.assign_upstream(batch_id, [line for line, _ in items], tag, holds)
        while status == "in_progress" and (batch_id in self._held or not self._task):
            lines = await self.store.pending(batch_id, self.concurrency)
            if not lines:
                break
            await asyncio.gather(
                *(self._one(batch_id, endpoint, principal, line, body) for line, body in lines)
            )
            status = (await self.store.batch_job(batch_id))[0]
        waiting = unresolved  # lines a provider is (or may be) working on: they will be charged
        if upstream is not None:
            for tag, items in (await self.store.upstream_pending(batch_id)).items():
                results = await self._settle(
                    batch_id, partial(upstream.collect, tag, batch_id, endpoint, principal, items)
                )
                waiting = waiting or results is None
        # A cancelled batch stops running its own lines at once, but waits for those already in
        # a provider's batch, so that each is billed and its hold released.
        if (status != "in_progress" and not waiting) or await self.store.unfinished_count(
            batch_id
        ) == 0:
            await self.store.finalize(batch_id)

    async def _submit(
        self,
        batch_id: str,
        endpoint: str,
        principal: dict[str, Any],
        sub: dict[str, Any],
        status: str,
        *,
        fresh: bool,
    ) -> bool:
        """Get submission ``sub`` to its provider exactly once; True once its fate is known.

        ``fresh``: recorded in this pass, so no upstream call was made for it yet. Otherwise the
        provider is asked first (its batches' metadata carry the tag) and a batch it has is
        adopted; only if it has none are the lines sent (again). If it cannot be asked, nothing
        is sent: the lines stay in their submission and the next pass asks again."""
        upstream = self.executor.upstream
        tag, provider = sub["tag"], sub["provider"]
        if not fresh:
            try:
                found = await upstream.find(provider, tag, sub["created_at"])
            except Exception as exc:  # noqa: BLE001 (unknown: never guess, ask again later)
                log.warning(
                    "batch %s: cannot ask provider %s whether it has submission %s (%s);"
                    " its %d lines wait, asked again in %.3g s",
                    batch_id, provider, tag, _why(exc), len(sub["lines"]), self._defer(tag),
                )
                return False
            if found is not None:
                log.warning(
                    "batch %s: provider %s has submission %s as batch %s (its id was not stored"
                    " before); adopted, not sent again", batch_id, provider, tag, found.get("id"),
                )
                await self.store.submitted(tag, provider, str(found["id"]), found.get("expires_at"))
                self._backoff.pop(tag, None)
                return True
            await upstream.discard_files(provider, tag, sub.get("file_id"))
            if status != "in_progress":  # cancelled before the provider got the lines
                await self._settle(batch_id, partial(
                    upstream.fail, batch_id, principal, sub["lines"],
                    "the batch was cancelled before this request was sent to the provider",
                    "batch_cancelled",
                ))
                self._backoff.pop(tag, None)
                return True
            log.warning(
                "batch %s: provider %s has no batch for submission %s; sending its %d lines",
                batch_id, provider, tag, len(sub["lines"]),
            )

        async def on_file(file_id: str) -> None:
            await self.store.submission_file(tag, file_id)

        try:
            batch = await upstream.send(batch_id, provider, tag, endpoint, principal, sub["lines"], on_file)
        except Exception as exc:  # noqa: BLE001 (maybe sent: the next pass asks the provider first)
            if getattr(exc, "permanent", False):
                # Refused for good (a 4xx other than 408/409/429, on the upload or the create
                # call): the provider made no batch of the lines and never will. They fail with
                # its status and message, cost 0, holds released; not sent again.
                log.error(
                    "batch %s: provider %s refused submission %s (%s); its %d lines fail and are"
                    " not sent again", batch_id, provider, tag, _why(exc), len(sub["lines"]),
                )
                detail = getattr(exc, "detail", None) or str(exc)
                await self._settle(batch_id, partial(
                    upstream.fail, batch_id, principal, sub["lines"],
                    f"The provider ({provider}) refused the batch this request was sent in"
                    f" (HTTP {exc.status}): {detail}",  # type: ignore[attr-defined]
                    "provider_batch_refused",
                    status=int(exc.status),  # type: ignore[attr-defined]
                ))
                self._backoff.pop(tag, None)
                return True
            log.warning(
                "batch %s: submission %s to provider %s failed (%s); the provider is asked"
                " whether it has it before it is sent again, in %.3g s",
                batch_id, tag, provider, _why(exc), self._defer(tag),
            )
            return False
        await self.store.submitted(tag, provider, str(batch["id"]), batch.get("expires_at"))
        self._backoff.pop(tag, None)
        return True

    def _defer(self, tag: str) -> float:
        """The provider failed submission ``tag`` (transiently, or maybe): its next attempt waits
        ``poll`` after the first failure, then twice as long after each further one (up to
        :data:`BACKOFF_MAX`); the wait."""
        failures = self._backoff.get(tag, (0, 0.0))[0] + 1
        wait = min(BACKOFF_MAX, self.poll * 2 ** min(failures - 1, 30))
        self._backoff[tag] = (failures, time.monotonic() + wait)
        return wait

    async def _settle(
        self, batch_id: str, step: Callable[..., Awaitable[LineResults | None]]
    ) -> LineResults | None:
        """Run ``step``, an upstream call that settles lines of a provider batch (``collect`` or
        ``fail``), with a ``store`` that marks them done (one durable write, with what billing
        each takes) before they are billed; any line it settled without storing is stored
        after. Its results (None: the provider is still working)."""
        stored: set[int] = set()

        async def store(results: dict[int, tuple[int, dict[str, Any], str | None]]) -> None:
            await self.store.finish_lines(batch_id, results)
            stored.update(results)

        results = await step(store=store)
        for line, (code, response) in (results or {}).items():
            if line not in stored:
                await self.store.finish_line(batch_id, line, code, response)
        return results

    async def _one(
        self,
        batch_id: str,
        endpoint: str,
        principal: dict[str, Any],
        line: int,
        body: dict[str, Any],
    ) -> None:
        rid = line_request_id(batch_id, line)
        stored = False

        async def store_answer(code: int, response: dict[str, Any], settle: str | None) -> None:
            # Done (durably) before it is billed: a line is never run twice, and a restart in
            # between bills it from what is stored here.
            nonlocal stored
            await self.store.finish_line(batch_id, line, code, response, settle)
            stored = True

        try:
            if getattr(self.executor, "stores_answers", False):
                code, response = await self.executor(
                    principal, endpoint, body, rid, store_answer=store_answer
                )
            else:
                code, response = await self.executor(principal, endpoint, body, rid)
        except Exception as exc:  # noqa: BLE001 (the line fails, the batch goes on)
            if stored:  # answered and stored; only billing failed (a restart bills it)
                log.warning("batch %s line %d not billed: %s", batch_id, line, type(exc).__name__)
                return
            log.warning("batch %s line %d failed: %s", batch_id, line, type(exc).__name__)
            code, response = 500, openai_error(ThriftyError(
                "internal error executing this request", status=500, type="api_error", code="internal_error"))
        if not stored:
            await self.store.finish_line(batch_id, line, code, response)
