"""The admin API: keys, teams, users, budgets, policies and spend, as JSON over HTTP.

Mounted by the gateway at ``/admin``; every route but the schema needs the
admin key (``Authorization: Bearer ...`` or ``x-api-key``). Errors use the
gateway's error format: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thrifty.errors import ThriftyError, openai_error
from thrifty.jsonlimits import MAX_DEPTH, deeper_than
from thrifty.spend import admin_ops
from thrifty.spend.contract import PermissionDenied
from thrifty.spend.periods import check_time, parse_time

if TYPE_CHECKING:
    from thrifty.spend.control import DbSpendControl

Handler = Callable[[Request], Awaitable[Any]]


def _error(status: int, message: str, error_type: str, code: str | None, headers: dict | None = None) -> JSONResponse:
    exc = ThriftyError(message, status=status, type=error_type, code=code)
    return JSONResponse(openai_error(exc), status, headers=headers)


async def _body(request: Request) -> dict:
    """The JSON object sent, or a 400. orjson refuses what Python's json module lets through
    and the store could not keep (NaN, Infinity, lone surrogates such as ``"\\ud800"``); the
    depth limit is the gateway's (thrifty.jsonlimits)."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise admin_ops.AdminError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise admin_ops.AdminError("request body must be a JSON object")
    if deeper_than(raw, body):
        raise admin_ops.AdminError(f"request body is nested more than {MAX_DEPTH} levels deep")
    return body


def _pick(body: dict, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise admin_ops.AdminError(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    missing = [name for name in required if body.get(name) in (None, "")]
    if missing:
        raise admin_ops.AdminError(f"missing field(s): {', '.join(missing)}")
    return body


def _time(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return check_time(float(value))
        except (ValueError, OverflowError):
            raise admin_ops.AdminError(f"{name} must be an ISO 8601 time or unix seconds") from None
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError as exc:
            raise admin_ops.AdminError(f"{name}: {exc}") from None
    raise admin_ops.AdminError(f"{name} must be an ISO 8601 time or unix seconds")


def create_admin_app(spend: DbSpendControl, *, max_body_bytes: int | None = None) -> Any:
    """The admin API as an ASGI app; request bodies over ``max_body_bytes`` (default: the
    gateway's ``max_body_bytes`` default, 32 MiB) get a 413 in this API's error format."""
    from thrifty.bodylimit import DEFAULT_MAX_BODY_BYTES, limit_body

    return limit_body(_create_admin_app(spend), max_body_bytes or DEFAULT_MAX_BODY_BYTES)


def _create_admin_app(spend: DbSpendControl) -> Starlette:
    db = spend.db

    def guarded(handler: Handler, *, mutates: bool = False, creates: bool = False
                ) -> Callable[[Request], Awaitable[Response]]:
        """The admin check and error rendering around ``handler``; 201 only where it creates
        (a revoke by POST answers 200, as the schema says)."""
        async def endpoint(request: Request) -> Response:
            try:
                principal = await spend.authenticate(
                    request.headers.get("authorization") or request.headers.get("x-api-key"))
                if not principal.is_admin:
                    raise PermissionDenied("This route needs the admin key, not a virtual key.")
                result = await handler(request)
                if mutates:
                    spend.reload()
            except ThriftyError as exc:  # refused by spend control, or an admin operation's error
                return _error(exc.status, exc.message, exc.type, exc.code, exc.headers)
            if isinstance(result, Response):
                return result
            return JSONResponse(result, 201 if creates else 200)

        return endpoint

    async def list_keys(request: Request) -> Any:
        q = request.query_params
        return {"data": admin_ops.list_keys(db, team_id=q.get("team_id"), user_id=q.get("user_id"),
                                        include_revoked=q.get("include_revoked") in ("1", "true"))}

    async def create_key(request: Request) -> Any:
        body = _pick(await _body(request), ("name", "user_id", "team_id", "tags", "metadata", "expires_at", "rpm", "tpm"))
        record, secret = admin_ops.create_key(
            db, name=body.get("name"), user_id=body.get("user_id"), team_id=body.get("team_id"),
            tags=body.get("tags"), metadata=body.get("metadata"),
            expires_at=_time("expires_at", body.get("expires_at")), rpm=body.get("rpm"), tpm=body.get("tpm"),
        )
        return {**record, "key": secret, "note": "The key is shown only this once; store it now."}

    async def get_key(request: Request) -> Any:
        record = admin_ops.get_key(db, request.path_params["key_id"])
        if record["revoked_at"] is not None and request.query_params.get("include_revoked") not in ("1", "true"):
            # Revoked (DELETE /keys/{id}) is gone, as in the list; ?include_revoked=true shows it.
            raise admin_ops.AdminError(f"no key {record['id']!r} (revoked; add ?include_revoked=true)", 404)
        return record

    async def revoke_key(request: Request) -> Any:
        return admin_ops.revoke_key(db, request.path_params["key_id"])

    async def list_teams(request: Request) -> Any:
        return {"data": admin_ops.list_teams(db)}

    async def create_team(request: Request) -> Any:
        body = _pick(await _body(request), ("id", "name", "metadata", "rpm", "tpm"), ("id",))
        return admin_ops.create_team(db, body["id"], name=body.get("name"), metadata=body.get("metadata"),
                                 rpm=body.get("rpm"), tpm=body.get("tpm"))

    async def get_team(request: Request) -> Any:
        return admin_ops.get_team(db, request.path_params["team_id"])

    async def list_users(request: Request) -> Any:
        return {"data": admin_ops.list_users(db, request.query_params.get("team_id"))}

    async def create_user(request: Request) -> Any:
        body = _pick(await _body(request), ("id", "team_id", "name", "email", "metadata"), ("id",))
        return admin_ops.create_user(db, body["id"], team_id=body.get("team_id"), name=body.get("name"),
                                 email=body.get("email"), metadata=body.get("metadata"))

    async def list_budgets(request: Request) -> Any:
        await run_in_threadpool(spend.flush)
        q = request.query_params
        return {"data": admin_ops.list_budgets(db, q.get("scope"), q.get("scope_id"))}

    async def set_budget(request: Request) -> Any:
        body = _pick(await _body(request), ("scope", "scope_id", "amount_usd", "period", "window_start", "window_end",
                                            "soft_thresholds", "webhook_url"), ("scope", "scope_id", "amount_usd"))
        await run_in_threadpool(spend.flush)
        return admin_ops.set_budget(
            db, body["scope"], body["scope_id"], amount_usd=body["amount_usd"], period=body.get("period", "monthly"),
            window_start=_time("window_start", body.get("window_start")),
            window_end=_time("window_end", body.get("window_end")),
            soft_thresholds=body.get("soft_thresholds") or [], webhook_url=body.get("webhook_url"),
        )

    async def get_budget(request: Request) -> Any:
        await run_in_threadpool(spend.flush)
        return admin_ops.get_budget(db, request.path_params["budget_id"])

    async def delete_budget(request: Request) -> Any:
        admin_ops.delete_budget(db, request.path_params["budget_id"])
        return {"deleted": request.path_params["budget_id"]}

    async def list_requests(request: Request) -> Any:  # first-hour: the per-request view
        from thrifty.spend.requests import RequestQueryError, query_from_params
        from thrifty.spend.requests import list_requests as page

        try:
            q = query_from_params(request.query_params, _time)
            await run_in_threadpool(spend.flush)
            return await run_in_threadpool(page, db, q)
        except RequestQueryError as exc:
            raise admin_ops.AdminError(str(exc)) from None

    async def list_policies(request: Request) -> Any:
        return {"data": admin_ops.list_policies(db)}

    async def put_policy(request: Request) -> Any:
        p = request.path_params
        return admin_ops.set_policy(db, p["scope"], p["scope_id"], await _body(request))

    async def delete_policy(request: Request) -> Any:
        p = request.path_params
        admin_ops.delete_policy(db, p["scope"], p["scope_id"])
        return {"deleted": f"{p['scope']}/{p['scope_id']}"}

    async def get_spend(request: Request) -> Any:
        q = request.query_params
        unknown = sorted(set(q) - {"group_by", "since", "until", "team_id", "key_id", "user_id"})
        if unknown:
            raise admin_ops.AdminError(f"unknown query parameter(s): {', '.join(unknown)}")
        await run_in_threadpool(spend.flush)
        return admin_ops.spend(db, admin_ops.SpendQuery(
            group_by=q.get("group_by", "team"), since=_time("since", q.get("since")),
            until=_time("until", q.get("until")), team_id=q.get("team_id"), key_id=q.get("key_id"),
            user_id=q.get("user_id"),
        ))

    async def openapi(request: Request) -> Response:
        from thrifty.spend.openapi import schema

        return JSONResponse(schema())

    async def not_found(request: Request, exc: Exception) -> Response:
        raw = request.scope.get("raw_path")  # the path as the client sent it, mount prefix included
        path = raw.decode("latin-1").split("?", 1)[0] if raw else request.url.path
        if getattr(exc, "status_code", 404) == 405:  # with Allow: every method of the path
            return _error(405, f"Method {request.method} is not allowed on {path}.",
                          "invalid_request_error", "method_not_allowed", getattr(exc, "headers", None))
        return _error(404, f"No admin route {path}; see /admin/openapi.json.", "not_found_error", "not_found")

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, "Internal error in the admin API; it has been logged.", "api_error", "internal_error")

    def methods(**handlers: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """One endpoint per path, dispatching on the method, so that a 405 lists (in ``Allow``)
        every method of the path, not those of whichever route matched first."""
        table = {m.upper(): h for m, h in handlers.items()}
        if "GET" in table:
            table["HEAD"] = table["GET"]

        async def endpoint(request: Request) -> Response:
            return await table[request.method](request)

        endpoint.methods = sorted(table)  # type: ignore[attr-defined]
        return endpoint

    def route(path: str, **handlers: Callable[[Request], Awaitable[Response]]) -> Route:
        endpoint = methods(**handlers)
        return Route(path, endpoint, methods=endpoint.methods)  # type: ignore[attr-defined]

    routes = [
        route("/openapi.json", get=openapi),
        route("/keys", get=guarded(list_keys), post=guarded(create_key, mutates=True, creates=True)),
        route("/keys/{key_id}", get=guarded(get_key), delete=guarded(revoke_key, mutates=True)),
        route("/keys/{key_id}/revoke", post=guarded(revoke_key, mutates=True)),
        route("/teams", get=guarded(list_teams), post=guarded(create_team, mutates=True, creates=True)),
        route("/teams/{team_id}", get=guarded(get_team)),
        route("/users", get=guarded(list_users), post=guarded(create_user, mutates=True, creates=True)),
        route("/budgets", get=guarded(list_budgets), post=guarded(set_budget, mutates=True, creates=True)),
        route("/budgets/{budget_id}", get=guarded(get_budget), delete=guarded(delete_budget, mutates=True)),
        route("/policies", get=guarded(list_policies)),
        route("/policies/{scope}/{scope_id}", put=guarded(put_policy, mutates=True),
              delete=guarded(delete_policy, mutates=True)),
        route("/spend", get=guarded(get_spend)),
        route("/requests", get=guarded(list_requests)),  # the per-request view
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error})
