"""The counts of every worker of ``thrifty serve --workers N``, for whichever worker is scraped.

Each worker keeps its counts in memory (:class:`~thrifty.pipeline.metrics.Metrics`: recording
stays a dict update) and writes them to ``<dir>/<pid>.json`` about once a second, off the
request path, replacing the file atomically. A scrape sums the scraped worker's live counts
with every other worker's file: another worker's counts are at most ``interval`` old. Files of
workers that died stay, so counters never go backwards while the server runs
(prometheus_client's multiprocess mode does the same); ``thrifty serve`` starts each run with
an empty directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import orjson

from thrifty.pipeline.metrics import Metrics, State

log = logging.getLogger("thrifty.gateway")

SUFFIX = ".json"


class SharedMetrics:
    """This worker's file in ``directory`` and the other workers' files beside it."""

    def __init__(self, metrics: Metrics, directory: Path, *, interval: float = 1.0) -> None:
        self.metrics = metrics
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.path = self.directory / f"{os.getpid()}{SUFFIX}"
        self._task: asyncio.Task | None = None

    def write(self) -> None:
        """Replace this worker's file with its counts now."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.metrics.state()))
        os.replace(tmp, self.path)

    def others(self) -> list[State]:
        """The other workers' last written counts (a file being replaced is skipped)."""
        states: list[State] = []
        for path in self.directory.glob("*" + SUFFIX):
            if path == self.path:
                continue
            try:
                states.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue
        return states

    def start(self) -> None:
        self.write()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.write()
            except OSError as exc:  # a full disk must not stop the gateway
                log.warning("writing this worker's metrics failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError):
            self.write()
