"""Finding the spend database a report reads: the same rules the gateway uses to write it."""

from __future__ import annotations

import time
from pathlib import Path

from thrifty.errors import UsageError
from thrifty.spend.db import Database


def database_url(url: str | None = None, config_path: str | None = None, data_dir: str | None = None) -> str:
    """``url``, else the gateway config's ``[spend] database_url`` / data dir, else the default data dir."""
    import thrifty.spend as spend_pkg

    if url:
        return url
    section: dict = {}
    ddir = Path(data_dir) if data_dir else None
    if config_path or ddir is None:
        from thrifty.config import load_config

        config = load_config(config_path)
        section = dict(config.spend or {})
        ddir = ddir or Path(config.data_dir)
    return spend_pkg.database_url(section, ddir)


def open_database(url: str | None = None, config_path: str | None = None, data_dir: str | None = None) -> Database:
    """Open the spend database read/write (reports keep their rollup tables in it)."""
    resolved = database_url(url, config_path, data_dir)
    if not resolved.startswith(("postgresql://", "postgres://")):
        path = resolved.removeprefix("sqlite:///")
        if not Path(path).exists():
            raise UsageError(f"no spend database at {path}: run the gateway (or 'thrifty demo') first, "
                             "or pass --database-url / --data-dir")
    try:
        db = Database(resolved)
        db.one("SELECT 1 FROM ledger LIMIT 1")
    except Exception as exc:  # noqa: BLE001 (any failure to open or read the ledger is a usage error)
        raise UsageError(f"cannot read the ledger at {resolved}: {exc}") from None
    return db


def parse_when(text: str, name: str) -> float:
    """ISO 8601, unix seconds, or ``now``."""
    from thrifty.spend.periods import parse_time

    if text == "now":
        return time.time()
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(f"--{name}: {exc}") from None
