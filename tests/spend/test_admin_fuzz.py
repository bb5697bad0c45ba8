"""Fuzz the admin API in-process with malformed requests (seeded, same cases every run).

Wrong JSON types for every field of every write route, raw bodies that are not JSON (NaN and
Infinity literals, huge numbers, deep nesting, invalid UTF-8, truncated), odd path ids and query
parameters, wrong methods and wrong Authorization schemes. Each answer must be below 500, and
every error the gateway's one format ``{"error": {"message", "type", "param", "code"}}`` with no
traceback; a 2xx must be JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest

from thrifty.spend import admin_ops
from thrifty.spend.admin import create_admin_app

SEED = 20261121
ADMIN = "sk-thr-admin-test"  # the conftest's control fixture
TRACE_MARKERS = ("Traceback", 'File "', "object has no attribute", "not subscriptable")

SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 7, 2**63, 10**30, -(10**30), 0.5, -2.5, 1e308, "", "x",
    "team-a", "monthly", "2026-11-01T00:00:00Z", "not a time", "\u0000", "é漢", [], {}, [1], {"a": 1},
]


def garbage(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.6:
        return rng.choice(SCALARS)
    if roll < 0.8:
        return [garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "x", "id", "rpm", "max_usd_per_mtok"]): garbage(rng, depth + 1) for _ in range(2)}


# route -> (method, path, a valid body, the fields to fuzz)
WRITES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "team": ("POST", "/teams", {"id": "t-{n}", "name": "T", "metadata": {"a": 1}, "rpm": 10, "tpm": 1000}),
    "user": ("POST", "/users", {"id": "u-{n}", "team_id": "base", "name": "U", "email": "u@x", "metadata": {}}),
    "key": (
        "POST",
        "/keys",
        {"name": "k", "team_id": "base", "tags": ["a"], "metadata": {}, "expires_at": "2099-01-01T00:00:00Z",
         "rpm": 5, "tpm": 50},
    ),
    "budget": (
        "POST",
        "/budgets",
        {"scope": "team", "scope_id": "base", "amount_usd": "10", "period": "daily",
         "soft_thresholds": [0.5], "webhook_url": "https://example.com/hook"},
    ),
    "policy": ("PUT", "/policies/team/base", {"allowed_models": ["m-ok"], "max_usd_per_mtok": 5}),
}

RAW_BODIES: list[tuple[str, bytes]] = [
    ("not-json", b"{"),
    ("array", b"[]"),
    ("string", b'"x"'),
    ("null", b"null"),
    ("nan", b'{"id": "t-nan", "rpm": NaN}'),
    ("nan-meta", b'{"id": "t-nanm", "metadata": {"a": NaN}}'),
    ("inf-meta", b'{"id": "t-infm", "metadata": {"a": Infinity}}'),
    ("inf", b'{"scope": "team", "scope_id": "base", "amount_usd": Infinity}'),
    ("nan-amount", b'{"scope": "team", "scope_id": "base", "amount_usd": NaN}'),
    ("huge-int", b'{"id": "t-big", "rpm": ' + b"9" * 500 + b"}"),
    ("huge-amount", b'{"scope": "team", "scope_id": "base", "amount_usd": 1' + b"0" * 400 + b"}"),
    ("tiny-amount", b'{"scope": "team", "scope_id": "base", "amount_usd": 1e-400}'),
    ("deep", b"[" * 100_000 + b"]" * 100_000),
    ("deep-meta", b'{"id": "t-deep", "metadata": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"),
    ("bad-utf8", b'{"id": "t-\xff"}'),
    ("bom", b'\xef\xbb\xbf{"id": "t-bom"}'),
    ("utf16", '{"id": "t-u16"}'.encode("utf-16")),
    ("dup-keys", b'{"id": "t-dup", "id": 5}'),
    ("trailing", b'{"id": "t-tr"} x'),
    ("nul", b'{"id": "t-nul"}\x00'),
]


def _dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def cases() -> list[tuple[str, str, str, bytes, dict[str, str] | None]]:
    """(id, method, path, body, headers or None for the admin key)."""
    rng = random.Random(SEED)
    out: list[tuple[str, str, str, bytes, dict[str, str] | None]] = []
    n = 0
    for route, (method, path, valid) in WRITES.items():
        for field in valid:
            for i, value in enumerate([None] + rng.sample(SCALARS, 10) + [garbage(rng) for _ in range(4)]):
                n += 1
                body = {k: (v.replace("{n}", str(n)) if isinstance(v, str) else v) for k, v in valid.items()}
                body[field] = value
                out.append((f"{route}-{field}-{i}", method, path, _dump(body), None))
        out.append((f"{route}-unknown-field", method, path, _dump({**valid, "bogus": 1}), None))
        for name, raw in RAW_BODIES:
            out.append((f"{route}-raw-{name}", method, path, raw, None))
    for policy_field in ("allowed_models", "denied_models", "allowed_providers", "deny_origin_countries",
                         "allowed_regions", "max_usd_per_mtok", "routing_profile", "bogus"):
        for i in range(6):
            out.append((f"policy-rule-{policy_field}-{i}", "PUT", "/policies/team/base",
                        _dump({policy_field: garbage(rng)}), None))
    odd_ids = ["x", "a" * 300, "%00", "..", "é", "%ff", "a%2Fb", " ", "-1", "base"]
    for i, ident in enumerate(odd_ids):
        for method, path in (("GET", "/keys/{}"), ("DELETE", "/keys/{}"), ("POST", "/keys/{}/revoke"),
                             ("GET", "/teams/{}"), ("GET", "/budgets/{}"), ("DELETE", "/budgets/{}"),
                             ("PUT", "/policies/{}/base"), ("PUT", "/policies/team/{}"),
                             ("DELETE", "/policies/team/{}")):
            body = _dump({"max_usd_per_mtok": 5}) if method == "PUT" else b""
            out.append((f"id-{i}-{method}-{path}", method, path.format(ident), body, None))
    queries = ["group_by=bogus", "group_by=", "since=yesterday", "since=1e400", "until=-1", "since=nan",
               "since=2026-13-45", "key_id=%ff", "x=1", "group_by=model&since=0&until=99999999999999999999",
               "since=" + "9" * 400, "team_id=" + "a" * 5000]
    for i, q in enumerate(queries):
        out.append((f"spend-query-{i}", "GET", "/spend?" + q, b"", None))
    for i, q in enumerate(["include_revoked=maybe", "team_id=%00", "user_id=" + "u" * 3000]):
        out.append((f"keys-query-{i}", "GET", "/keys?" + q, b"", None))
    out.append(("budgets-query", "GET", "/budgets?scope=bogus&scope_id=%ff", b"", None))
    for method, path in (("PATCH", "/teams"), ("DELETE", "/teams"), ("POST", "/spend"), ("GET", "/nope"),
                         ("PUT", "/keys"), ("GET", "/policies/team"), ("POST", "/openapi.json")):
        out.append((f"method-{method}-{path}", method, path, b"{}", None))
    auths = {
        "none": {},
        "empty": {"authorization": ""},
        "basic": {"authorization": "Basic " + ADMIN},
        "token": {"authorization": "Token " + ADMIN},
        "wrong": {"authorization": "Bearer sk-thr-wrong"},
        "bearer-only": {"authorization": "Bearer"},
        "latin1": {"authorization": b"Bearer \xff\xfe"},
        "virtual-key": {"authorization": "Bearer {VIRTUAL}"},
        "long": {"authorization": "Bearer " + "k" * 10_000},
    }
    for name, headers in auths.items():
        for method, path in (("GET", "/keys"), ("POST", "/teams"), ("GET", "/spend")):
            out.append((f"auth-{name}-{method}-{path}", method, path, _dump({"id": "t-auth"}), headers))
    return out


CASES = cases()


def check(case_id: str, r: httpx.Response, auth_case: bool) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if auth_case and not case_id.startswith("auth-virtual"):
        assert r.status_code == 401, r.text
    if r.status_code >= 400:
        for marker in TRACE_MARKERS:
            assert marker not in r.text, r.text[:300]
        doc = r.json()
        assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
        err = doc["error"]
        assert all(isinstance(err[k], str) and err[k] for k in ("message", "type", "code")), doc
        assert err["param"] is None or isinstance(err["param"], str), doc
    else:
        r.json()


@pytest.mark.parametrize("family", sorted({c[0].split("-")[0] for c in CASES}))
def test_admin_fuzz(control, family: str) -> None:
    admin_ops.create_team(control.db, "base")
    _, virtual = admin_ops.create_key(control.db, team_id="base")
    control.reload()
    app = create_admin_app(control)
    mine = [c for c in CASES if c[0].split("-")[0] == family]
    assert mine

    async def run() -> list[str]:
        failures = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            for case_id, method, path, body, headers in mine:
                auth = {"authorization": f"Bearer {ADMIN}"} if headers is None else {
                    k: v.replace("{VIRTUAL}", virtual) if isinstance(v, str) else v for k, v in headers.items()}
                try:
                    r = await client.request(method, path, content=body, headers=auth)
                    check(case_id, r, headers is not None)
                except Exception as exc:  # noqa: BLE001 (collect every failure of the family, then report them all)
                    failures.append(f"{case_id}: {type(exc).__name__}: {str(exc)[:300]}")
        return failures

    failures = asyncio.run(run())
    assert not failures, "\n".join(failures)


def test_cases_cover_every_route() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) > 300
    for route in WRITES:
        assert any(i.startswith(f"{route}-raw-nan") for i in ids), route
