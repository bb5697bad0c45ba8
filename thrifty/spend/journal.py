"""The ledger's write-ahead journal: one append-only file per running gateway.

``append`` is one unbuffered ``os.write``: once it returns, the record is in
the kernel's page cache and survives ``kill -9`` of the process; the batcher
fsyncs the file in batches for power loss. Each live journal is held under an
exclusive ``flock``, so on start a gateway can tell the journals of dead
processes (unlocked) from those of live ones sharing the directory, and
replay only the former.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import secrets
import socket
import time
from collections.abc import Iterator

import orjson

SUFFIX = ".journal"


def journal_id(path: pathlib.Path) -> str:
    """A name for a journal unique across hosts sharing one database."""
    return f"{socket.gethostname()}:{path.resolve()}"


class Journal:
    """This process's journal, locked while it lives."""

    def __init__(self, directory: pathlib.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{int(time.time() * 1000):013d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self.path = directory / name
        self.id = journal_id(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.offset = 0  # bytes written so far
        self.records_end = 0  # the end offset of the last ledger record (holds are not records)
        self.holds_open = 0  # holds journaled here and not settled yet (SQLite)

    def append(self, line: bytes) -> int:
        """Write one record (a line); returns the offset just past it."""
        written = os.write(self._fd, line)
        if written < len(line):  # a short write (rare): the rest, as the file takes it
            view = memoryview(line)[written:]
            while view:
                view = view[os.write(self._fd, view) :]
        self.offset += len(line)
        return self.offset

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self, *, delete: bool = False) -> None:
        if self._fd < 0:
            return
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


class Orphan:
    """The journal of a process that is gone; locked by us while we replay it."""

    def __init__(self, path: pathlib.Path, fd: int) -> None:
        self.path = path
        self.id = journal_id(path)
        self._fd = fd

    def records(self, offset: int) -> Iterator[tuple[int, dict]]:
        """(end offset, record) for every complete record after ``offset``."""
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            pos = offset
            for line in fh:
                pos += len(line)
                if not line.endswith(b"\n"):
                    break  # torn by a crash mid-write: that response never completed
                try:
                    yield pos, orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self._fd)


def orphans(directory: pathlib.Path) -> list[Orphan]:
    """Journals in ``directory`` that no live process holds, oldest first."""
    found: list[Orphan] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*" + SUFFIX)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        found.append(Orphan(path, fd))
    return found
