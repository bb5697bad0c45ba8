"""The reports' own tables, created beside the spend schema (same database, both dialects).

Spend control owns the ledger; reports only add tables of their own, each
created with ``CREATE TABLE IF NOT EXISTS`` so any number of processes may call
:func:`ensure_tables` at start.
"""

from __future__ import annotations

from thrifty.spend.db import Database

_TABLES = (
    # Daily pre-aggregates of the ledger, one row per day and dimension combination.
    """CREATE TABLE IF NOT EXISTS report_daily (
        day BIGINT NOT NULL, key_id TEXT, user_id TEXT, team_id TEXT, tags TEXT,
        served_model TEXT, provider TEXT,
        requests BIGINT NOT NULL, errors BIGINT NOT NULL, cache_hits BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL, cost_nanos BIGINT NOT NULL, frontier_cost_nanos BIGINT NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS report_daily_day ON report_daily (day)",
    """CREATE TABLE IF NOT EXISTS report_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    # User feedback on one ledger record (the latest rating wins).
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, key_id TEXT,
        score DOUBLE PRECISION NOT NULL, comment TEXT
    )""",
)


def ensure_tables(db: Database) -> None:
    """Create the reports' tables if they are missing (idempotent, safe to race)."""
    for sql in _TABLES:
        try:
            db.execute(sql)
        except Exception as exc:  # two processes racing on PostgreSQL's catalog: the other one won
            if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                raise


def get_state(db: Database, name: str) -> str | None:
    row = db.one("SELECT value FROM report_state WHERE name = ?", (name,))
    return row[0] if row else None


def set_state(db: Database, name: str, value: str) -> None:
    db.execute(
        "INSERT INTO report_state (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )
