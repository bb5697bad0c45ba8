"""Spend control: keys, teams, budgets, rate limits, policies and the ledger.

The gateway builds one with :func:`from_config` and mounts :func:`admin_app`
at ``/admin``. Heavy modules load on first use so ``import thrifty.spend``
stays cheap.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any

from thrifty.spend.contract import (
    AuthError,
    BudgetExceeded,
    LedgerRecord,
    OpenSpendControl,
    PermissionDenied,
    PolicyDenied,
    Principal,
    RateLimited,
    Reservation,
    SpendControl,
    SpendError,
    SpendUnavailable,
)

if TYPE_CHECKING:
    from thrifty.spend.control import DbSpendControl

__all__ = [
    "AuthError",
    "BudgetExceeded",
    "LedgerRecord",
    "OpenSpendControl",
    "PermissionDenied",
    "PolicyDenied",
    "Principal",
    "RateLimited",
    "Reservation",
    "SpendControl",
    "SpendError",
    "SpendUnavailable",
    "admin_app",
    "database_url",
    "from_config",
]

CONFIG_KEYS = (
    "database_url", "admin_key", "journal_dir", "hold_ttl_s", "poll_interval_s", "flush_interval_s",
    "lease_heartbeat_s", "lease_expiry_s",
)


def database_url(section: dict[str, Any], data_dir: pathlib.Path) -> str:
    """The configured URL, else ``THRIFTY_DATABASE_URL``, else SQLite at ``data_dir/spend.db``."""
    url = section.get("database_url") or os.environ.get("THRIFTY_DATABASE_URL")
    if url:
        return str(url)
    return f"sqlite:///{pathlib.Path(data_dir).resolve() / 'spend.db'}"


def from_config(section: dict[str, Any] | None, data_dir: pathlib.Path, *, shared: bool = False) -> DbSpendControl:
    """Spend control from the gateway config's ``[spend]`` section.

    Keys: ``database_url`` (``postgresql://...``; default SQLite WAL file
    ``data_dir/spend.db``), ``admin_key`` (else ``THRIFTY_ADMIN_KEY``; with
    neither, one is generated on first start and printed once to stderr),
    ``journal_dir`` (default ``data_dir/journal``), ``hold_ttl_s``,
    ``poll_interval_s``, ``flush_interval_s`` (default 0.02: the ledger commits the records
    journaled meanwhile to the database once per interval, in one transaction), and
    ``lease_heartbeat_s`` and ``lease_expiry_s`` (PostgreSQL, default 15 and 45: how often a
    replica renews its lease and how long it lasts; the holds of a replica dead that long are
    charged in full by another). ``shared``: this
    process is one of several workers on the same database (``thrifty serve --workers N``): on
    SQLite, budget holds and rate-limit windows live in the database file instead of this
    process's memory.
    """
    from thrifty.errors import UsageError
    from thrifty.spend.control import DbSpendControl
    from thrifty.spend.leases import EXPIRY_S, HEARTBEAT_S

    section = dict(section or {})
    unknown = sorted(set(section) - set(CONFIG_KEYS))
    if unknown:
        raise UsageError(f"unknown [spend] setting(s): {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    data_dir = pathlib.Path(data_dir)
    journal_dir = pathlib.Path(section.get("journal_dir") or data_dir / "journal")
    try:
        spend = DbSpendControl(
            database_url(section, data_dir),
            journal_dir,
            admin_key=section.get("admin_key") or os.environ.get("THRIFTY_ADMIN_KEY") or None,
            hold_ttl=float(section.get("hold_ttl_s", 3600)),
            poll_interval=float(section.get("poll_interval_s", 1.0)),
            flush_interval=float(section.get("flush_interval_s", 0.02)),
            shared=shared,
            lease_heartbeat=float(section.get("lease_heartbeat_s", HEARTBEAT_S)),
            lease_expiry=float(section.get("lease_expiry_s", EXPIRY_S)),
        )
    except UsageError:
        raise
    except Exception as exc:  # bad URL, database down, unwritable directory: one clear line
        url = _redact(database_url(section, data_dir))
        raise UsageError(f"spend control could not start on {url}: {exc}") from exc
    if spend.generated_admin_key:
        print(
            "thrifty: generated the admin key; it is shown only this once, store it now:\n"
            f"    {spend.generated_admin_key}",
            file=sys.stderr,
        )
    return spend


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def admin_app(spend: DbSpendControl, *, max_body_bytes: int | None = None) -> Any:
    """The admin API (an ASGI app) for the gateway to mount at ``/admin``; bodies over
    ``max_body_bytes`` (the gateway's setting; default 32 MiB) get a 413."""
    from thrifty.spend.admin import create_admin_app

    return create_admin_app(spend, max_body_bytes=max_body_bytes)
