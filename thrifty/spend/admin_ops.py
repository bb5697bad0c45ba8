"""Admin operations on the spend database: teams, users, keys, budgets, policies, spend.

Shared by the admin API and the CLI, so both validate the same way. Every
change bumps the config version, which every gateway sharing the database
polls to reload (about once a second). Errors are :class:`AdminError` with an
HTTP-like status, for both front ends to render.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thrifty.errors import ThriftyError
from thrifty.jsonlimits import readable, text_error
from thrifty.spend.db import Database
from thrifty.spend.keys import display_prefix, generate_key, hash_key
from thrifty.spend.money import format_usd, nanos_to_usd, usd_to_nanos
from thrifty.spend.periods import MAX_TS, MIN_TS, PERIODS, iso, period_bounds
from thrifty.spend.policy import Policy
from thrifty.spend.schema import bump_config

SCOPES = ("key", "user", "team")
MAX_NANOS = 10**18  # $1e9: far below the 64-bit columns' limit, with room for sums
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")


def check_webhook_url(url: object) -> None:
    """A budget webhook must be an absolute http(s) URL with a host (and a valid port)."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url:
        raise AdminError("webhook_url must be an http(s) URL, e.g. https://hooks.example.com/thrifty")
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if (parts is None or parts.scheme not in ("http", "https") or not port_ok
            or any(c.isspace() for c in url) or not _host_ok(parts.hostname or "")):
        raise AdminError(f"webhook_url {url!r} is not a usable http(s) URL with a host, "
                         "e.g. https://hooks.example.com/thrifty")


def _host_ok(host: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return bool(host) and all(re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", x) for x in labels)


_ADMIN_ERROR_KINDS = {404: ("not_found_error", "not_found"), 409: ("conflict_error", "already_exists")}


class AdminError(ThriftyError):
    """Bad input or a missing/duplicate object; ``status`` is the HTTP status to answer with, and
    the error's type and code follow from it."""

    def __init__(self, message: str, status: int = 400) -> None:
        type, code = _ADMIN_ERROR_KINDS.get(status, ("invalid_request_error", "invalid_value"))
        super().__init__(message, status=status, type=type, code=code)


def _id(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise AdminError(f"{kind} id must be 1-128 characters of letters, digits and . _ @ : - (got {value!r})")
    return value


def _text(name: str, value: Any) -> Any:
    """``value`` if it can be stored and read back as UTF-8 text, else a 400 (never stored)."""
    why = text_error(value)
    if why is not None:
        raise AdminError(f"{name} {why}")
    return value


def _load(text: str) -> Any:
    """A JSON column as data that can always be rendered: rows stored before input was checked
    may escape lone surrogates (``\\ud800``); those read back as U+FFFD instead of failing."""
    value = json.loads(text)
    return readable(value) if "\\u" in text else value


def _opt_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise AdminError(f"{name} must be a string")
    return _text(name, value)


def _opt_ref(kind: str, value: Any) -> str | None:
    """The id of an existing object a new one refers to: a string (its existence is checked after)."""
    if value is not None and not isinstance(value, str):
        raise AdminError(f"{kind}_id must be a string id (got {type(value).__name__})")
    return _text(f"{kind}_id", value)


def _known(kind: str, value: str) -> str:
    """An id to look up: one that is not valid text names nothing (404, not a driver error)."""
    if not isinstance(value, str) or text_error(value) is not None:
        raise AdminError(f"no {kind} {value!r}", 404)
    return value


def _opt_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 10.0 is an integer in JSON (and in the admin API's schema)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**15:
        raise AdminError(f"{name} must be a positive integer (at most 10^15)")
    return value


def _json_obj(name: str, value: Any) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise AdminError(f"{name} must be a JSON object")
    _text(name, value)
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except ValueError:
        raise AdminError(f"{name} must be JSON (no NaN or Infinity)") from None


def _tags(value: Any) -> str:
    if value is None:
        return "[]"
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) and t for t in value):
        raise AdminError("tags must be a list of non-empty strings")
    return json.dumps(list(_text("tags", value)))


def _where(fixed: list[str], optional: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (or "") of the ``fixed`` conditions and of each optional
    ``(condition, value)`` whose value is not None, with the values as its parameters."""
    where, params = list(fixed), list[Any]()
    for cond, value in optional:
        if value is not None:
            where.append(cond)
            params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def _exists(db: Database, table: str, id_: str) -> bool:
    return db.one(f"SELECT 1 FROM {table} WHERE id = ?", (id_,)) is not None


# --- teams and users -------------------------------------------------------------


def create_team(
    db: Database, team_id: str, *, name: str | None = None, metadata: dict | None = None,
    rpm: int | None = None, tpm: int | None = None,
) -> dict:
    team_id = _id("team", team_id)
    name = _opt_str("name", name)
    with db.transaction():
        if _exists(db, "teams", team_id):
            raise AdminError(f"team {team_id!r} already exists", 409)
        db.execute(
            "INSERT INTO teams (id, name, metadata, rpm, tpm, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (team_id, name, _json_obj("metadata", metadata), _opt_int("rpm", rpm), _opt_int("tpm", tpm), time.time()),
        )
        bump_config(db)
    return get_team(db, team_id)


def get_team(db: Database, team_id: str) -> dict:
    row = db.one("SELECT id, name, metadata, rpm, tpm, created_at FROM teams WHERE id = ?", (_known("team", team_id),))
    if row is None:
        raise AdminError(f"no team {team_id!r}", 404)
    return {"id": row[0], "name": row[1], "metadata": _load(row[2]), "rpm": row[3], "tpm": row[4],
            "created_at": iso(row[5])}


def list_teams(db: Database) -> list[dict]:
    return [get_team(db, r[0]) for r in db.all("SELECT id FROM teams ORDER BY id")]


def create_user(
    db: Database, user_id: str, *, team_id: str | None = None, name: str | None = None,
    email: str | None = None, metadata: dict | None = None,
) -> dict:
    user_id = _id("user", user_id)
    team_id, name, email = _opt_ref("team", team_id), _opt_str("name", name), _opt_str("email", email)
    with db.transaction():
        if _exists(db, "users", user_id):
            raise AdminError(f"user {user_id!r} already exists", 409)
        if team_id is not None and not _exists(db, "teams", team_id):
            raise AdminError(f"no team {team_id!r}", 404)
        db.execute(
            "INSERT INTO users (id, name, email, team_id, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (user_id, name, email, team_id, _json_obj("metadata", metadata), time.time()),
        )
        bump_config(db)
    return get_user(db, user_id)


def get_user(db: Database, user_id: str) -> dict:
    row = db.one("SELECT id, name, email, team_id, metadata, created_at FROM users WHERE id = ?",
                 (_known("user", user_id),))
    if row is None:
        raise AdminError(f"no user {user_id!r}", 404)
    return {"id": row[0], "name": row[1], "email": row[2], "team_id": row[3],
            "metadata": _load(row[4]), "created_at": iso(row[5])}


def list_users(db: Database, team_id: str | None = None) -> list[dict]:
    where, params = _where([], [("team_id = ?", team_id or None)])
    return [get_user(db, r[0]) for r in db.all(f"SELECT id FROM users{where} ORDER BY id", params)]


# --- keys ------------------------------------------------------------------------

_KEY_COLUMNS = "id, prefix, name, user_id, team_id, tags, metadata, rpm, tpm, is_admin, created_at, expires_at, revoked_at"


def _key_row(row: Sequence[Any]) -> dict:
    return {
        "id": row[0], "prefix": row[1], "name": row[2], "user_id": row[3], "team_id": row[4],
        "tags": _load(row[5]), "metadata": _load(row[6]), "rpm": row[7], "tpm": row[8],
        "is_admin": bool(row[9]), "created_at": iso(row[10]), "expires_at": iso(row[11]),
        "revoked_at": iso(row[12]), "active": row[12] is None and (row[11] is None or row[11] > time.time()),
    }


def create_key(
    db: Database, *, name: str | None = None, user_id: str | None = None, team_id: str | None = None,
    tags: Sequence[str] | None = None, metadata: dict | None = None, expires_at: float | None = None,
    rpm: int | None = None, tpm: int | None = None, admin: bool = False,
) -> tuple[dict, str]:
    """Create a key; returns (its record, the secret key). The secret is not stored anywhere."""
    if expires_at is not None and (
        isinstance(expires_at, bool) or not isinstance(expires_at, (int, float))
        or not MIN_TS <= expires_at <= MAX_TS
    ):
        raise AdminError("expires_at must be a time")
    name, user_id, team_id = _opt_str("name", name), _opt_ref("user", user_id), _opt_ref("team", team_id)
    secret = generate_key(admin=admin)
    key_id = "key_" + secrets.token_hex(8)
    with db.transaction():
        if user_id is not None:
            row = db.one("SELECT team_id FROM users WHERE id = ?", (user_id,))
            if row is None:
                raise AdminError(f"no user {user_id!r}", 404)
            if team_id is None:
                team_id = row[0]
            elif row[0] is not None and row[0] != team_id:
                raise AdminError(f"user {user_id!r} belongs to team {row[0]!r}, not {team_id!r}", 409)
        if team_id is not None and not _exists(db, "teams", team_id):
            raise AdminError(f"no team {team_id!r}", 404)
        db.execute(
            "INSERT INTO api_keys (id, key_hash, prefix, name, user_id, team_id, tags, metadata, rpm, tpm,"
            " is_admin, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key_id, hash_key(secret), display_prefix(secret), name, user_id, team_id, _tags(tags),
             _json_obj("metadata", metadata), _opt_int("rpm", rpm), _opt_int("tpm", tpm), int(admin),
             time.time(), expires_at),
        )
        bump_config(db)
    return get_key(db, key_id), secret


def get_key(db: Database, key_id: str) -> dict:
    row = db.one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (_known("key", key_id),))
    if row is None:
        raise AdminError(f"no key {key_id!r}", 404)
    return _key_row(row)


def list_keys(db: Database, *, team_id: str | None = None, user_id: str | None = None,
              include_revoked: bool = False) -> list[dict]:
    where, params = _where(
        ["is_admin = 0"] + ([] if include_revoked else ["revoked_at IS NULL"]),
        [("team_id = ?", team_id or None), ("user_id = ?", user_id or None)],
    )
    return [_key_row(r) for r in db.all(f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at", params)]


def revoke_key(db: Database, key_id: str) -> dict:
    with db.transaction():
        row = db.one("SELECT revoked_at FROM api_keys WHERE id = ?", (_known("key", key_id),))
        if row is None:
            raise AdminError(f"no key {key_id!r}", 404)
        if row[0] is None:
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
            bump_config(db)
    return get_key(db, key_id)


def ensure_admin_key(db: Database, configured: str | None) -> str | None:
    """Make sure an admin key exists; returns a newly generated one (to print once) or None.

    A configured key (config ``admin_key`` or ``THRIFTY_ADMIN_KEY``) is
    registered by its hash; with none configured and none stored, one is
    generated.
    """
    if configured:
        digest = hash_key(configured)
        with db.transaction():
            if db.one("SELECT 1 FROM api_keys WHERE key_hash = ? AND is_admin = 1 AND revoked_at IS NULL", (digest,)) is None:
                db.execute(
                    "INSERT INTO api_keys (id, key_hash, prefix, name, is_admin, created_at) VALUES (?, ?, ?, ?, 1, ?)"
                    " ON CONFLICT (key_hash) DO NOTHING",
                    ("key_admin_" + secrets.token_hex(6), digest, display_prefix(configured), "admin (configured)", time.time()),
                )
                bump_config(db)
        return None
    if db.one("SELECT 1 FROM api_keys WHERE is_admin = 1 AND revoked_at IS NULL") is not None:
        return None
    _record, secret = create_key(db, name="admin (generated)", admin=True)
    return secret


# --- budgets ---------------------------------------------------------------------


def _scope(db: Database, scope: str, scope_id: str) -> None:
    if scope not in SCOPES:
        raise AdminError(f"scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    _opt_ref(scope, scope_id)
    table = {"key": "api_keys", "user": "users", "team": "teams"}[scope]
    if not _exists(db, table, scope_id):
        raise AdminError(f"no {scope} {scope_id!r}", 404)


def set_budget(
    db: Database, scope: str, scope_id: str, *, amount_usd: Any, period: str = "monthly",
    window_start: float | None = None, window_end: float | None = None,
    soft_thresholds: Sequence[float] = (), webhook_url: str | None = None,
) -> dict:
    """Create or replace the budget of this scope and period (one per scope and period)."""
    if period not in PERIODS:
        raise AdminError(f"period must be one of {', '.join(PERIODS)} (got {period!r})")
    try:
        limit = usd_to_nanos(str(amount_usd) if isinstance(amount_usd, float) else amount_usd)
    except (ArithmeticError, TypeError, ValueError):  # what Decimal raises for a bad amount
        raise AdminError(f"amount_usd must be a number of USD (got {amount_usd!r})") from None
    if limit < 0:
        raise AdminError("amount_usd must not be negative")
    if limit > MAX_NANOS:
        raise AdminError("amount_usd must be at most 1,000,000,000 USD")
    if not isinstance(soft_thresholds, (list, tuple)) or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1 for t in soft_thresholds
    ):
        raise AdminError("soft_thresholds must be fractions between 0 and 1, e.g. [0.5, 0.8]")
    if webhook_url is not None:  # first-hour: checked when set, not at the threshold
        check_webhook_url(webhook_url)
    if period == "window":
        window_start = time.time() if window_start is None else window_start
        if window_end is not None and window_end <= window_start:
            raise AdminError("window_end must be after window_start")
    else:
        window_start = window_end = None
    now = time.time()
    with db.transaction():
        _scope(db, scope, scope_id)
        row = db.one("SELECT id FROM budgets WHERE scope = ? AND scope_id = ? AND period = ?", (scope, scope_id, period))
        if row is not None:
            budget_id = row[0]
            db.execute(
                "UPDATE budgets SET limit_nanos = ?, window_start = ?, window_end = ?, soft_thresholds = ?,"
                " webhook_url = ? WHERE id = ?",
                (limit, window_start, window_end, json.dumps(sorted(soft_thresholds)), webhook_url, budget_id),
            )
        else:
            budget_id = "bud_" + secrets.token_hex(8)
            db.execute(
                "INSERT INTO budgets (id, scope, scope_id, limit_nanos, period, window_start, window_end,"
                " soft_thresholds, webhook_url, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (budget_id, scope, scope_id, limit, period, window_start, window_end,
                 json.dumps(sorted(soft_thresholds)), webhook_url, now),
            )
            # Spend already in the ledger for this period counts against a new budget.
            start, _end = period_bounds(period, now, window_start, window_end)
            column = {"key": "key_id", "user": "user_id", "team": "team_id"}[scope]
            spent = db.one(f"SELECT COALESCE(SUM(cost_nanos), 0) FROM ledger WHERE {column} = ? AND ts >= ?",
                           (scope_id, start))[0]
            db.execute("INSERT INTO budget_spend (budget_id, period_start, spent_nanos) VALUES (?, ?, ?)",
                       (budget_id, start, int(spent)))
        bump_config(db)
    return get_budget(db, budget_id)


_BUDGET_COLUMNS = "id, scope, scope_id, limit_nanos, period, window_start, window_end, soft_thresholds, webhook_url"


def _budget_row(db: Database, row: Sequence[Any], now: float | None = None) -> dict:
    now = time.time() if now is None else now
    start, end = period_bounds(row[4], now, row[5], row[6])
    spent = db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ? AND period_start = ?", (row[0], start))
    spent_nanos = int(spent[0]) if spent else 0
    return {
        "id": row[0], "scope": row[1], "scope_id": row[2], "amount_usd": format(nanos_to_usd(row[3]).normalize(), "f"),
        "period": row[4], "window_start": iso(row[5]), "window_end": iso(row[6]),
        "soft_thresholds": _load(row[7]), "webhook_url": row[8],
        "period_start": iso(start), "resets_at": iso(end) if row[4] != "window" else None,
        "spent_usd": f"{nanos_to_usd(spent_nanos):f}", "remaining_usd": f"{nanos_to_usd(row[3] - spent_nanos):f}",
        "summary": f"{format_usd(spent_nanos)} of {format_usd(row[3])}",
    }


def get_budget(db: Database, budget_id: str) -> dict:
    row = db.one(f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE id = ?", (_known("budget", budget_id),))
    if row is None:
        raise AdminError(f"no budget {budget_id!r}", 404)
    return _budget_row(db, row)


def list_budgets(db: Database, scope: str | None = None, scope_id: str | None = None) -> list[dict]:
    # a scope_id means nothing without its scope
    where, params = _where([], [("scope = ?", scope or None), ("scope_id = ?", (scope and scope_id) or None)])
    rows = db.all(f"SELECT {_BUDGET_COLUMNS} FROM budgets{where} ORDER BY scope, scope_id, period", params)
    return [_budget_row(db, r) for r in rows]


def delete_budget(db: Database, budget_id: str) -> None:
    with db.transaction():
        if not _exists(db, "budgets", _known("budget", budget_id)):
            raise AdminError(f"no budget {budget_id!r}", 404)
        db.execute("DELETE FROM budgets WHERE id = ?", (budget_id,))
        bump_config(db)


# --- policies --------------------------------------------------------------------


def set_policy(db: Database, scope: str, scope_id: str, rules: dict) -> dict:
    if scope not in ("key", "team"):
        raise AdminError("policies apply to a key or a team")
    _text("rules", rules)
    try:
        policy = Policy.from_rules(rules)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    with db.transaction():
        _scope(db, scope, scope_id)
        db.execute(
            "INSERT INTO policies (scope, scope_id, rules, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (scope, scope_id) DO UPDATE SET rules = excluded.rules, updated_at = excluded.updated_at",
            (scope, scope_id, json.dumps(policy.to_rules(), sort_keys=True), time.time()),
        )
        bump_config(db)
    return {"scope": scope, "scope_id": scope_id, "rules": policy.to_rules()}


def list_policies(db: Database) -> list[dict]:
    return [{"scope": r[0], "scope_id": r[1], "rules": _load(r[2])}
            for r in db.all("SELECT scope, scope_id, rules FROM policies ORDER BY scope, scope_id")]


def delete_policy(db: Database, scope: str, scope_id: str) -> None:
    with db.transaction():
        if db.one("SELECT 1 FROM policies WHERE scope = ? AND scope_id = ?",
                  (_known("policy scope", scope), _known("policy for", scope_id))) is None:
            raise AdminError(f"no policy for {scope} {scope_id!r}", 404)
        db.execute("DELETE FROM policies WHERE scope = ? AND scope_id = ?", (scope, scope_id))
        bump_config(db)


# --- spend -----------------------------------------------------------------------

GROUPS = {"key": "key_id", "user": "user_id", "team": "team_id", "model": "served_model", "provider": "provider"}


@dataclass(frozen=True)
class SpendQuery:
    group_by: str = "team"
    since: float | None = None
    until: float | None = None
    team_id: str | None = None
    key_id: str | None = None
    user_id: str | None = None


def spend(db: Database, q: SpendQuery) -> dict:
    """Spend from the ledger, grouped; amounts are exact decimal strings of USD."""
    if q.group_by not in GROUPS:
        raise AdminError(f"group_by must be one of {', '.join(GROUPS)}")
    col = GROUPS[q.group_by]
    where, params = _where([], [("ts >= ?", q.since), ("ts < ?", q.until), ("team_id = ?", q.team_id),
                                ("key_id = ?", q.key_id), ("user_id = ?", q.user_id)])
    rows = db.all(
        f"SELECT {col}, COUNT(*), COALESCE(SUM(cost_nanos), 0), COALESCE(SUM(frontier_cost_nanos), 0),"
        f" COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
        f" SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"
        f" FROM ledger{where} GROUP BY {col} ORDER BY 3 DESC",
        params,
    )
    groups = [
        {q.group_by: r[0], "requests": int(r[1]), "errors": int(r[6] or 0), "cost_usd": f"{nanos_to_usd(int(r[2])):f}",
         "frontier_cost_usd": f"{nanos_to_usd(int(r[3])):f}", "prompt_tokens": int(r[4]),
         "completion_tokens": int(r[5])}
        for r in rows
    ]
    total = sum(int(r[2]) for r in rows)
    return {"group_by": q.group_by, "since": iso(q.since), "until": iso(q.until),
            "total_cost_usd": f"{nanos_to_usd(total):f}", "requests": sum(g["requests"] for g in groups),
            "groups": groups}
