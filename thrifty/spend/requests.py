"""One row per request from the ledger, filtered and paged by a cursor (never prompt text).

The admin API (``GET /admin/requests``), ``thrifty requests list`` and the dashboard's
Requests page all read through :func:`list_requests`. Pages are keyset-paged, newest first,
on ``(ts, request_id)``: each page is one index range scan whatever the ledger's size (the
``ledger_*_ts`` indexes cover every filter), where OFFSET paging would rescan the skipped rows.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from thrifty.spend.db import Database
from thrifty.spend.money import nanos_to_usd

MAX_LIMIT = 500
COLUMNS = (
    "request_id, ts, key_id, user_id, team_id, endpoint, requested_model, served_model, provider, "
    "status, error_type, prompt_tokens, completion_tokens, cached_tokens, cost_nanos, "
    "frontier_cost_nanos, latency_ms, retries, stream, cache_hit, batch, route_reason"
)
FILTERS = {"key": "key_id", "team": "team_id", "user": "user_id", "model": "served_model",
           "provider": "provider", "status": "status"}


class RequestQueryError(ValueError):
    """A filter or cursor that cannot be used (the caller's mistake: a 400)."""


@dataclass(frozen=True, slots=True)
class RequestQuery:
    key: str | None = None
    team: str | None = None
    user: str | None = None
    model: str | None = None  # the model that served it
    provider: str | None = None
    status: int | None = None  # an HTTP status, e.g. 200 or 429
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive
    limit: int = 50
    cursor: str | None = None  # from the previous page's next_cursor


def encode_cursor(ts: float, request_id: str) -> str:
    raw = json.dumps([ts, request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    bad = RequestQueryError("cursor is not one this API returned (use next_cursor as given)")
    try:
        ts, rid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not isinstance(rid, str):
        raise bad
    return float(ts), rid


def _row(r: tuple) -> dict[str, Any]:
    (rid, ts, key, user, team, endpoint, requested, served, provider, status, error, p_tok, c_tok,
     cached, cost, frontier, latency, retries, stream, hit, batch, reason) = r
    return {
        "request_id": rid, "ts": ts, "key_id": key, "user_id": user, "team_id": team,
        "endpoint": endpoint, "requested_model": requested, "served_model": served,
        "provider": provider, "status": status, "error_type": error,
        "prompt_tokens": p_tok, "completion_tokens": c_tok, "cached_tokens": cached,
        "cost_usd": str(nanos_to_usd(cost or 0)), "frontier_cost_usd": str(nanos_to_usd(frontier or 0)),
        "latency_ms": latency, "retries": retries, "stream": bool(stream),
        "cache_hit": bool(hit), "batch": bool(batch), "route_reason": reason,
    }


def list_requests(db: Database, q: RequestQuery) -> dict[str, Any]:
    """``{"data": [...], "next_cursor": str | None}``, newest first."""
    if not 1 <= q.limit <= MAX_LIMIT:
        raise RequestQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    where, params = [], []
    for name, column in FILTERS.items():
        value = getattr(q, name)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if q.since is not None:
        where.append("ts >= ?")
        params.append(q.since)
    if q.until is not None:
        where.append("ts < ?")
        params.append(q.until)
    if q.cursor:
        ts, rid = decode_cursor(q.cursor)
        where.append("(ts < ? OR (ts = ? AND request_id < ?))")
        params += [ts, ts, rid]
    sql = f"SELECT {COLUMNS} FROM ledger"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY ts DESC, request_id DESC LIMIT ?"
    rows = db.all(sql, (*params, q.limit + 1))
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    data = [_row(r) for r in rows]
    nxt = encode_cursor(rows[-1][1], rows[-1][0]) if more and rows else None
    return {"data": data, "next_cursor": nxt}


PARAMS = ("key_id", "team_id", "user_id", "model", "provider", "status", "since", "until", "limit",
          "cursor")


def query_from_params(params: Any, parse_time: Any) -> RequestQuery:
    """A :class:`RequestQuery` from query-string parameters (the admin API's names)."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise RequestQueryError(f"unknown parameter(s): {', '.join(unknown)}; allowed: {', '.join(PARAMS)}")

    def integer(name: str, default: int | None) -> int | None:
        value = params.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise RequestQueryError(f"{name} must be an integer, not {value!r}") from None

    def when(name: str) -> float | None:
        value = params.get(name)
        if value is None:
            return None
        try:
            number: Any = float(value)
        except ValueError:
            number = value
        try:
            return parse_time(name, number)
        except Exception as exc:  # noqa: BLE001 (the parser's own message says what is wrong)
            raise RequestQueryError(str(exc)) from None

    return RequestQuery(
        key=params.get("key_id"), team=params.get("team_id"), user=params.get("user_id"),
        model=params.get("model"), provider=params.get("provider"), status=integer("status", None),
        since=when("since"), until=when("until"), limit=integer("limit", 50) or 0,
        cursor=params.get("cursor"),
    )
