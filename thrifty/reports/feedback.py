"""``POST /v1/feedback``: a user's rating of one answer, stored beside its ledger record.

Body: ``{"request_id": "...", "score": 0..1}`` or ``{"request_id": "...", "thumbs": "up"|"down"}``,
plus an optional ``"comment"`` (at most 2,000 characters; stored, never logged). The
request id is the one the gateway returns in the ``x-request-id`` header.
Any valid key may rate its own requests; the admin key may rate any. Rating again
replaces the earlier rating. Errors use the gateway's error format.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from thrifty.errors import GatewayError, ThriftyError, openai_error
from thrifty.jsonlimits import MAX_DEPTH, deeper_than
from thrifty.reports.tables import ensure_tables
from thrifty.router.labels import poll_now
from thrifty.router.labels import store as store_label
from thrifty.spend.contract import SpendError

MAX_COMMENT = 2_000
_THUMBS = {"up": 1.0, "down": 0.0, True: 1.0, False: 0.0}


class FeedbackError(GatewayError):
    """A rating refused, in the gateway's one error type (a 400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_value",
                 error_type: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(status, message, type=error_type, code=code, param=param)


def error_response(status: int, message: str, error_type: str, code: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The gateway's OpenAI-style error document, for the feedback endpoint and the dashboard."""
    return render(ThriftyError(message, status=status, type=error_type, code=code, param=param, headers=headers))


def render(exc: ThriftyError) -> JSONResponse:
    return JSONResponse(openai_error(exc), exc.status, headers=exc.headers)


def parse(body: Any) -> tuple[str, float, str | None]:
    """(request id, score in [0, 1], comment) from a feedback body, or a clear FeedbackError."""
    if not isinstance(body, dict):
        raise FeedbackError("The request body must be a JSON object.", code="invalid_type")
    unknown = sorted(set(body) - {"request_id", "score", "thumbs", "comment"})
    if unknown:
        raise FeedbackError(f"Unknown field(s): {', '.join(unknown)}. Allowed: request_id, score, thumbs, comment.",
                            code="unknown_parameter", param=unknown[0])
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid.strip() or len(rid) > 200:
        raise FeedbackError("Missing or invalid 'request_id': the id of the request you rate (a string).",
                            code="missing_required_parameter", param="request_id")
    has_score, has_thumbs = body.get("score") is not None, body.get("thumbs") is not None
    if has_score == has_thumbs:
        raise FeedbackError("Send exactly one of 'score' (a number from 0 to 1) or 'thumbs' ('up' or 'down').",
                            code="missing_required_parameter", param="score")
    if has_score:
        score = body["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise FeedbackError("Invalid 'score': expected a number from 0 to 1.", param="score")
        value = float(score)
    else:
        thumbs = body["thumbs"]
        key = thumbs.lower() if isinstance(thumbs, str) else thumbs
        if not isinstance(key, (str, bool)) or key not in _THUMBS:  # (a list is unhashable)
            raise FeedbackError("Invalid 'thumbs': expected 'up' or 'down'.", param="thumbs")
        value = _THUMBS[key]
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise FeedbackError(f"Invalid 'comment': expected a string of at most {MAX_COMMENT} characters.",
                            param="comment")
    return rid.strip(), value, comment


def record(db: Any, request_id: str, score: float, comment: str | None, *, key_id: str | None,
           is_admin: bool) -> dict[str, Any]:
    """Store the rating; the record must exist and (unless admin) belong to ``key_id``."""
    row = db.one("SELECT key_id, served_model FROM ledger WHERE request_id = ?", (request_id,))
    if row is None or (not is_admin and row[0] != key_id):
        raise FeedbackError(f"No request '{request_id}' in the ledger for this key.", 404, "not_found",
                            "not_found_error", "request_id")
    db.execute(
        "INSERT INTO feedback (request_id, ts, key_id, score, comment) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (request_id) DO UPDATE SET ts = excluded.ts, key_id = excluded.key_id,"
        " score = excluded.score, comment = excluded.comment",
        (request_id, time.time(), key_id, score, comment),
    )
    # A routed answer's rating teaches the router (thrifty.router.labels); others are kept only.
    learned = store_label(db, request_id, "feedback", score)
    return {"object": "feedback", "request_id": request_id, "score": score, "model": row[1], "learned": learned}


def learn_from_feedback(db: Any) -> tuple[int, int]:
    """(added, updated): a label for every rating of a routed request (one with a prompt
    context in the ledger) that has none, e.g. rated before learning existed or while it was
    off, and the rating again where it changed since. Idempotent."""
    ensure_tables(db)
    rows = db.all(
        "SELECT f.request_id, f.score, r.score FROM feedback f JOIN ledger l ON l.request_id = f.request_id"
        " LEFT JOIN router_labels r ON r.request_id = f.request_id AND r.source = 'feedback'"
        " WHERE l.route_context IS NOT NULL AND l.served_model IS NOT NULL"
        " AND (r.request_id IS NULL OR r.score <> f.score) ORDER BY f.request_id")
    added = updated = 0
    for rid, score, old in rows:
        if store_label(db, rid, "feedback", float(score)):
            added += old is None
            updated += old is not None
    return added, updated


def feedback_app(spend: Any, *, max_body_bytes: int | None = None) -> Any:
    """The ASGI app for ``/v1/feedback`` (the gateway mounts it by path prefix). A body over
    ``max_body_bytes`` (the gateway's setting; default 32 MiB) gets a 413 in OpenAI's format
    before it is read."""
    from thrifty.bodylimit import DEFAULT_MAX_BODY_BYTES, limit_body
    from thrifty.spend.db import Database

    state: dict[str, Any] = {}

    def db() -> Database:
        # Its own connection: the spend control's handle belongs to its own callers.
        if "db" not in state:
            state["db"] = Database(spend.db_url)
            ensure_tables(state["db"])
        return state["db"]

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        if scope["path"] not in ("", "/"):  # mounted at /v1/feedback: the gateway strips the prefix
            full = scope.get("root_path", "") + scope["path"]
            response = error_response(404, f"Unknown path: {full}.", "invalid_request_error", "not_found")
        elif request.method != "POST":
            response = error_response(405, "Use POST /v1/feedback.", "invalid_request_error", "method_not_allowed")
        else:
            response = await _handle(request)
        await response(scope, receive, send)

    async def _handle(request: Request) -> JSONResponse:
        try:
            auth = request.headers.get("authorization") or request.headers.get("x-api-key")
            principal = await spend.authenticate(auth)
            raw = await request.body()
            try:  # hardening: orjson refuses NaN and lone surrogates; the gateway's depth limit
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                raise FeedbackError("The request body is not valid JSON.", code="invalid_json") from None
            if body is not None and deeper_than(raw, body):
                raise FeedbackError(f"The request body is nested more than {MAX_DEPTH} levels deep.",
                                    code="invalid_json")
            rid, score, comment = parse(body)
            is_admin = bool(getattr(principal, "is_admin", False))

            def store() -> dict[str, Any]:
                try:
                    return record(db(), rid, score, comment, key_id=principal.key_id, is_admin=is_admin)
                except FeedbackError as exc:
                    if exc.status != 404:
                        raise
                    spend.flush()  # the ledger is written in batches: the record may be in flight
                    return record(db(), rid, score, comment, key_id=principal.key_id, is_admin=is_admin)

            result = await run_in_threadpool(store)
            if result.get("learned"):
                await run_in_threadpool(poll_now, spend.db_url)
            return JSONResponse(result, 200)
        except (SpendError, FeedbackError) as exc:
            return render(exc)

    return limit_body(app, max_body_bytes or DEFAULT_MAX_BODY_BYTES)
