"""Bad input is a clear 400 (or a usage error) at the edge, never a 500, never stored (issue 11.4),
through ``thrifty serve`` on SQLite over the counting fake upstream.

Bodies nested deeper than the limit on every JSON route; lone surrogates (``"\\ud800"``) in
every admin write; a store that already holds such rows (as earlier versions stored them)
still lists, and its key is still served and billed; a CLI argument that is not UTF-8 is a
usage error with nothing stored.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest
from adv_setup import ADMIN_KEY, PRICE, Gateway, make_keys, write_toml

from thrifty.spend import admin_ops
from thrifty.spend.db import Database
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.loadtest import ROOT

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
ASK = [{"role": "user", "content": "hello"}]


def _deep(levels: int) -> bytes:
    """``{"a": {"a": ... 1 ...}}``, ``levels`` objects deep, as raw JSON."""
    return b'{"a":' * (levels - 1) + b"1" + b"}" * (levels - 1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "gw").mkdir()
    db_url = f"sqlite:///{tmp / 'gw' / 'spend.db'}"
    keys = make_keys(db_url, {"eng": "100", "poisoned": "100"})
    # Rows as earlier versions stored them (json.dumps escapes a lone surrogate as \ud800).
    db = Database(db_url)
    poisoned = admin_ops.list_keys(db, team_id="poisoned")[0]["id"]
    db.close()
    conn = sqlite3.connect(tmp / "gw" / "spend.db")
    conn.execute("UPDATE teams SET metadata = ? WHERE id = 'poisoned'", ('{"owner": "\\ud800"}',))
    conn.execute("UPDATE api_keys SET tags = ?, metadata = ? WHERE id = ?", ('["\\udcff"]', '{"x": "\\udc80"}', poisoned))
    conn.execute("INSERT INTO policies (scope, scope_id, rules, updated_at) VALUES ('team', 'poisoned', ?, 0)",
                 ('{"deny_models": ["\\ud800"]}',))
    conn.commit()
    conn.close()
    with FakeUpstream("ok") as fake:
        config = write_toml(tmp / "gw.toml", {
            "data_dir": str(tmp / "gw"),
            "spend": {"database_url": db_url},
            "providers": {"up": {"type": "openai", "base_url": fake.base_url},
                          "anth": {"type": "anthropic", "base_url": fake.origin, "api_key": "sk-ant-x"}},
            "models": {"m": {"provider": "up", **PRICE, "route": False},
                       "c": {"provider": "anth", **PRICE, "route": False},
                       "emb": {"provider": "up", "mode": "embedding", **PRICE, "route": False}},
        })
        with Gateway(config, tmp / "gw.log") as gw:
            yield gw.url, keys, fake, tmp / "gw" / "spend.db", db_url


def _post(url: str, path: str, raw: bytes, key: str, method: str = "POST") -> httpx.Response:
    return httpx.request(method, url + path, content=raw, timeout=30,
                         headers={"authorization": f"Bearer {key}", "content-type": "application/json"})


MODEL_ROUTES = [
    ("/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":%s}'),
    ("/v1/messages", b'{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"metadata":%s}'),
    ("/v1/responses", b'{"model":"m","input":"hi","metadata":%s}'),
    ("/v1/embeddings", b'{"model":"emb","input":"hi","user":%s}'),
    ("/v1/feedback", b'{"request_id":"req_x","score":1,"comment":%s}'),
]


@pytest.mark.parametrize("path, template", MODEL_ROUTES, ids=[p for p, _ in MODEL_ROUTES])
@pytest.mark.parametrize("levels", [240, 300, 1000])
def test_deep_bodies_are_a_400_on_every_model_route(served, path, template, levels):
    url, keys, fake, _db, _u = served
    hits = fake.hits
    r = _post(url, path, template % _deep(levels), keys["eng"])
    assert r.status_code == 400, (r.status_code, r.text[:300])
    doc = r.json()
    message = doc["error"]["message"] if "error" in doc else doc["message"]
    assert "nested" in message or "not valid JSON" in message, message
    assert fake.hits == hits  # never forwarded


def test_a_reasonably_deep_body_is_still_served(served):
    url, keys, _fake, _db, _u = served
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":%s}' % _deep(200)
    assert _post(url, "/v1/chat/completions", raw, keys["eng"]).status_code == 200


ADMIN_WRITES = [
    ("POST", "/admin/teams", b'{"id":"t-%s","metadata":{"a":%s}}'),
    ("POST", "/admin/teams", b'{"id":"t-%s","name":%s}'),
    ("POST", "/admin/users", b'{"id":"u-%s","name":%s}'),
    ("POST", "/admin/users", b'{"id":"u-%s","email":%s}'),
    ("POST", "/admin/keys", b'{"name":"k-%s","tags":[%s]}'),
    ("POST", "/admin/keys", b'{"name":"k-%s","metadata":{"a":%s}}'),
    ("POST", "/admin/keys", b'{"name":"k-%s","team_id":%s}'),
    ("POST", "/admin/budgets", (b'{"scope":"team","scope_id":"eng","amount_usd":"1","period":"weekly",'
                                b'"webhook_url":"https://x/%s","window_start":%s}')),
    ("PUT", "/admin/policies/team/eng", b'{"allow_models":["m","%s",%s]}'),
]


@pytest.mark.parametrize("method, path, template", ADMIN_WRITES)
@pytest.mark.parametrize("bad", [b'"\\ud800"', b'"x\\udfffy"', b'"\\udc00\\ud800"', _deep(300)])
def test_bad_admin_bodies_are_a_400_and_nothing_is_stored(served, method, path, template, bad):
    url, _keys, _fake, db_path, _u = served
    before = _counts(db_path)
    r = _post(url, path, template % (b"probe", bad), ADMIN_KEY, method)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert _counts(db_path) == before
    for listing in ("/admin/teams", "/admin/keys", "/admin/users", "/admin/policies", "/admin/budgets"):
        assert httpx.get(url + listing, headers=ADMIN, timeout=10).status_code == 200


def _counts(db_path) -> tuple[int, ...]:
    conn = sqlite3.connect(db_path)
    try:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("teams", "users", "api_keys", "budgets", "policies"))
    finally:
        conn.close()


def test_a_store_holding_such_rows_still_lists_and_serves(served):
    url, keys, _fake, _db, _db_url = served
    for listing in ("/admin/teams", "/admin/keys", "/admin/policies", "/admin/teams/poisoned"):
        r = httpx.get(url + listing, headers=ADMIN, timeout=10)
        assert r.status_code == 200, (listing, r.text[:300])
    teams = {t["id"]: t for t in httpx.get(url + "/admin/teams", headers=ADMIN).json()["data"]}
    assert teams["poisoned"]["metadata"]["owner"].strip("\ufffd") == ""  # shown as U+FFFD
    # Its key is served and billed (the tag is written to the ledger as U+FFFD).
    r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": ASK, "max_tokens": 5},
                   headers={"authorization": f"Bearer {keys['poisoned']}"}, timeout=10)
    assert r.status_code == 200, r.text
    spend = httpx.get(url + "/admin/spend?team_id=poisoned", headers=ADMIN, timeout=10).json()
    assert spend["requests"] == 1
    assert Decimal(spend["total_cost_usd"]) == Decimal(r.headers["x-thrifty-cost-usd"]) > 0


def test_non_utf8_cli_argument_is_a_usage_error(served):
    _url, _keys, _fake, db_path, db_url = served
    before = _counts(db_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    for argv in (
        [b"keys", b"create", b"--team", b"eng", b"--tag", b"ok", b"--tag", b"\xff\xfe", b"--db", db_url.encode()],
        [b"teams", b"create", b"t-\xe9", b"--db", db_url.encode()],
        [b"keys", b"create", b"--name", b"n\xc3", b"--db", db_url.encode()],
    ):
        proc = subprocess.run([sys.executable.encode(), b"-m", b"thrifty.cli", *argv], env=env,
                              capture_output=True, check=False, timeout=60)
        assert proc.returncode == 2, (argv, proc.stderr.decode(errors="replace"))
        assert b"UTF-8" in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
    assert _counts(db_path) == before
