"""The admin API's OpenAPI 3.1 document (written by hand: the API is small and stable)."""

from __future__ import annotations

from typing import Any

from thrifty.spend.periods import MAX_TS, MIN_TS

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_INT = {"type": ["integer", "null"], "minimum": 1, "maximum": 10**15}
_OBJ = {"type": "object"}
_NOBJ = {"type": ["object", "null"]}  # in requests: null is no metadata
_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$"}  # store._ID
# What thrifty.spend.periods.parse_time takes: unix seconds, or an ISO 8601 date or UTC time.
_TIME_TEXT = (r"^(-?[0-9]{1,11}(\.[0-9]{1,6})?|[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
              r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?Z?)?)$")
_TIME = {"anyOf": [{"type": "string", "pattern": _TIME_TEXT},
                   {"type": "number", "minimum": MIN_TS, "maximum": MAX_TS}, {"type": "null"}],
         "description": "ISO 8601 UTC or unix seconds"}
_MONEY = {"type": "string", "description": "USD as an exact decimal string"}
_URL = {"type": ["string", "null"], "pattern": "^https?://"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"message": _STR, "type": _STR, "param": _NSTR, "code": _NSTR},
                                ("message", "type", "param", "code"))},
                  ("error",)),
    "Team": {"type": "object", "properties": {"id": _STR, "name": _NSTR, "metadata": _OBJ, "rpm": _INT, "tpm": _INT,
                                              "created_at": _STR}},
    "TeamCreate": _obj({"id": _ID, "name": _NSTR, "metadata": _NOBJ, "rpm": _INT, "tpm": _INT}, ("id",)),
    "User": {"type": "object", "properties": {"id": _STR, "name": _NSTR, "email": _NSTR, "team_id": _NSTR,
                                              "metadata": _OBJ, "created_at": _STR}},
    "UserCreate": _obj({"id": _ID, "team_id": _NSTR, "name": _NSTR, "email": _NSTR, "metadata": _NOBJ}, ("id",)),
    "Key": {"type": "object", "properties": {
        "id": _STR, "prefix": _STR, "name": _NSTR, "user_id": _NSTR, "team_id": _NSTR,
        "tags": {"type": "array", "items": _STR}, "metadata": _OBJ, "rpm": _INT, "tpm": _INT,
        "created_at": _STR, "expires_at": _NSTR, "revoked_at": _NSTR, "active": {"type": "boolean"}}},
    "KeyCreate": _obj({"name": _NSTR, "user_id": _NSTR, "team_id": _NSTR,
                       "tags": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
                       "metadata": _NOBJ, "expires_at": _TIME, "rpm": _INT, "tpm": _INT}),
    "KeyCreated": {"allOf": [{"$ref": "#/components/schemas/Key"},
                             {"type": "object", "properties": {"key": {"type": "string", "description":
                                                                       "the secret key, shown only once"}}}]},
    "Budget": {"type": "object", "properties": {
        "id": _STR, "scope": {"enum": ["key", "user", "team"]}, "scope_id": _STR, "amount_usd": _MONEY,
        "period": {"enum": ["daily", "weekly", "monthly", "window"]}, "window_start": _NSTR, "window_end": _NSTR,
        "soft_thresholds": {"type": "array", "items": {"type": "number"}}, "webhook_url": _NSTR,
        "period_start": _STR, "resets_at": _NSTR, "spent_usd": _MONEY, "remaining_usd": _MONEY}},
    "BudgetSet": _obj({
        "scope": {"enum": ["key", "user", "team"]}, "scope_id": {"type": "string", "minLength": 1},
        "amount_usd": {"anyOf": [{"type": "string", "pattern": "^[0-9]{1,9}(\\.[0-9]{1,9})?$"},
                                 {"type": "number", "minimum": 0, "maximum": 1e9}]},
        "period": {"enum": ["daily", "weekly", "monthly", "window"]},
        "window_start": _TIME, "window_end": {**_TIME, "description": "after window_start (else a 400)"},
        "soft_thresholds": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        "webhook_url": _URL}, ("scope", "scope_id", "amount_usd")),
    "PolicyRules": _obj({
        **{name: {"type": "array", "items": _STR} for name in (
            "allow_models", "deny_models", "allow_providers", "deny_providers", "allow_origin_countries",
            "deny_origin_countries", "allow_regions", "deny_regions")},
        "max_usd_per_mtok": {"type": "number", "minimum": 0}, "routing_profile": _STR}),
    "Policy": {"type": "object", "properties": {"scope": {"enum": ["key", "team"]}, "scope_id": _STR,
                                                "rules": {"$ref": "#/components/schemas/PolicyRules"}}},
    "Spend": {"type": "object", "properties": {
        "group_by": _STR, "since": _NSTR, "until": _NSTR, "total_cost_usd": _MONEY, "requests": {"type": "integer"},
        "groups": {"type": "array", "items": {"type": "object"}}}},
    "Requests": {"type": "object", "properties": {  # first-hour: GET /admin/requests
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "request_id": _STR, "ts": {"type": "number"}, "key_id": _NSTR, "team_id": _NSTR,
            "served_model": _NSTR, "status": {"type": ["integer", "null"]}, "cost_usd": _MONEY}}},
        "next_cursor": _NSTR}},
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, ok: str | None, *, body: str | None = None, status: str = "200",
        params: tuple[dict, ...] = (), listed: bool = False, conflict: bool = False) -> dict:
    """One operation: ``status`` (201 only where it creates) and every error it answers (409
    where an id can already exist); 405 with ``Allow`` for other methods of a path is HTTP's."""
    content = ({"application/json": {"schema": {"type": "object", "properties": {"data": {
        "type": "array", "items": _ref(ok)}}}}} if listed else {"application/json": {"schema": _ref(ok)}}) if ok else {}
    errors = {code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
              for code, text in (("400", "bad input"), ("401", "missing or invalid admin key"),
                                 ("403", "not the admin key"), ("404", "no such object"),
                                 *((("409", "an object with this id already exists"),) if conflict else ()))}
    op: dict[str, Any] = {"summary": summary, "responses": {status: {"description": "OK", "content": content}, **errors},
                          "security": [{"adminKey": []}]}
    if body:  # optional where every field is (an empty body is then an empty object)
        optional = not SCHEMAS[body].get("required")
        op["requestBody"] = {"required": not optional, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = list(params)
    return op


def _path(name: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or _STR}


def _query(name: str, description: str = "", schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema or _STR, "description": description}


_SCOPE = {"enum": ["key", "team"]}
_TIME_Q = {"type": "string", "pattern": _TIME_TEXT}


def schema() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "thrifty admin API", "version": "1",
                 "description": "Keys, teams, users, budgets, policies and spend. Mounted at /admin."},
        "servers": [{"url": "/admin"}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "adminKey": {"type": "http", "scheme": "bearer", "description": "the admin key"}}},
        "paths": {
            "/keys": {"get": _op("List keys", "Key", listed=True, params=(_query("team_id"), _query("user_id"),
                                                                           _query("include_revoked"))),
                      "post": _op("Create a key (the secret is returned once; 409: the user is of another team)",
                                  "KeyCreated", body="KeyCreate", status="201", conflict=True)},
            "/keys/{key_id}": {
                "get": _op("Get a key (a revoked key is 404 unless include_revoked=true)", "Key",
                           params=(_path("key_id"), _query("include_revoked", "true or 1: revoked keys too"))),
                "delete": _op("Revoke a key (it answers 404 from then on, as in the list)", "Key",
                              params=(_path("key_id"),))},
            "/keys/{key_id}/revoke": {"post": _op("Revoke a key", "Key", params=(_path("key_id"),))},
            "/teams": {"get": _op("List teams", "Team", listed=True),
                       "post": _op("Create a team", "Team", body="TeamCreate", status="201", conflict=True)},
            "/teams/{team_id}": {"get": _op("Get a team", "Team", params=(_path("team_id"),))},
            "/users": {"get": _op("List users", "User", listed=True, params=(_query("team_id"),)),
                       "post": _op("Create a user", "User", body="UserCreate", status="201", conflict=True)},
            "/budgets": {"get": _op("List budgets with their current spend", "Budget", listed=True,
                                    params=(_query("scope"), _query("scope_id"))),
                         "post": _op("Set the budget of a scope and period (creates or replaces)", "Budget",
                                     body="BudgetSet", status="201")},
            "/budgets/{budget_id}": {"get": _op("Get a budget", "Budget", params=(_path("budget_id"),)),
                                     "delete": _op("Delete a budget", None, params=(_path("budget_id"),))},
            "/policies": {"get": _op("List policies", "Policy", listed=True)},
            "/policies/{scope}/{scope_id}": {
                "put": _op("Set the policy of a key or team", "Policy", body="PolicyRules",
                           params=(_path("scope", _SCOPE), _path("scope_id"))),
                "delete": _op("Delete a policy", None, params=(_path("scope", _SCOPE), _path("scope_id")))},
            "/spend": {"get": _op("Spend from the ledger", "Spend", params=(
                _query("group_by", "key, user, team, model or provider",
                       {"enum": ["key", "user", "team", "model", "provider"]}),
                _query("since", "ISO 8601 or unix", _TIME_Q), _query("until", "ISO 8601 or unix", _TIME_Q),
                _query("team_id"), _query("key_id"), _query("user_id")))},
            # first-hour: the per-request view (thrifty.spend.requests)
            "/requests": {"get": _op("One row per request, newest first (no prompt text)", "Requests", params=(
                _query("key_id"), _query("team_id"), _query("user_id"), _query("model", "the model that served it"),
                _query("provider"),
                _query("status", "an HTTP status, e.g. 200 or 429", {"type": "integer"}),
                _query("since", "ISO 8601 or unix, inclusive", _TIME_Q),
                _query("until", "ISO 8601 or unix, exclusive", _TIME_Q),
                _query("limit", "1-500, default 50", {"type": "integer"}),
                _query("cursor", "next_cursor of the previous page (opaque)")))},
        },
    }
