"""The admin API (as the gateway mounts it) and the CLI, on one database."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.testclient import TestClient

import thrifty.cli
from thrifty.spend import AuthError, admin_app

ADMIN = {"authorization": "Bearer sk-thr-admin-test"}


@pytest.fixture
def client(control):
    with TestClient(admin_app(control), raise_server_exceptions=False) as c:
        yield c


def test_admin_flow_keys_teams_budgets_policies_spend(client, control):
    assert client.post("/teams", json={"id": "eng", "rpm": 100}, headers=ADMIN).status_code == 201
    assert client.post("/users", json={"id": "ann", "team_id": "eng"}, headers=ADMIN).status_code == 201
    r = client.post("/keys", json={"user_id": "ann", "tags": ["x"], "expires_at": "2099-01-01T00:00:00Z"},
                    headers=ADMIN)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["key"].startswith("sk-thr-") and created["team_id"] == "eng"
    listed = client.get("/keys", headers=ADMIN).json()["data"]
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    assert created["key"] not in json.dumps(listed)
    principal = asyncio.run(control.authenticate("Bearer " + created["key"]))  # usable at once
    assert principal.user_id == "ann"
    r = client.post("/budgets", json={"scope": "team", "scope_id": "eng", "amount_usd": "25.50",
                                      "period": "weekly", "soft_thresholds": [0.5, 0.9]}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["amount_usd"] == "25.5" and r.json()["resets_at"]
    r = client.put("/policies/team/eng", json={"deny_origin_countries": ["cn"], "max_usd_per_mtok": 20},
                   headers=ADMIN)
    assert r.status_code == 200 and r.json()["rules"]["deny_origin_countries"] == ["CN"]
    assert client.get("/spend?group_by=key", headers=ADMIN).json()["total_cost_usd"] == "0.000000000"
    assert client.delete(f"/keys/{created['id']}", headers=ADMIN).json()["revoked_at"]
    with pytest.raises(AuthError):
        asyncio.run(control.authenticate("Bearer " + created["key"]))


@pytest.mark.parametrize("method, path, body, status, code", [
    ("post", "/teams", {"id": "bad id!"}, 400, "invalid_value"),
    ("post", "/teams", {"name": "no id"}, 400, "invalid_value"),
    ("post", "/teams", {"id": "t", "colour": "red"}, 400, "invalid_value"),
    ("post", "/budgets", {"scope": "team", "scope_id": "nope", "amount_usd": 5}, 404, "not_found"),
    ("post", "/budgets", {"scope": "planet", "scope_id": "x", "amount_usd": 5}, 400, "invalid_value"),
    ("post", "/keys", {"team_id": "nope"}, 404, "not_found"),
    ("post", "/keys", {"expires_at": "next tuesday"}, 400, "invalid_value"),
    ("put", "/policies/team/x", {"deny_everything": True}, 400, "invalid_value"),
    ("get", "/spend?group_by=colour", None, 400, "invalid_value"),
    ("get", "/nowhere", None, 404, "not_found"),
    ("delete", "/teams", None, 405, "method_not_allowed"),
])
def test_bad_input_gets_a_clear_error_in_the_api_format(client, method, path, body, status, code):
    kwargs = {"json": body} if body is not None else {}
    r = getattr(client, method)(path, headers=ADMIN, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_invalid_json_and_auth(client, control):
    r = client.post("/teams", content=b"{not json", headers=ADMIN)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert client.get("/keys").status_code == 401
    assert client.get("/keys", headers={"authorization": "Bearer wrong"}).json()["error"]["type"] == \
        "authentication_error"
    client.post("/teams", json={"id": "eng"}, headers=ADMIN)
    user_key = client.post("/keys", json={"team_id": "eng"}, headers=ADMIN).json()["key"]
    r = client.get("/keys", headers={"authorization": f"Bearer {user_key}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_openapi_document_describes_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/keys", "/keys/{key_id}", "/teams", "/users", "/budgets", "/policies/{scope}/{scope_id}", "/spend"):
        assert path in doc["paths"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["BudgetSet"])


def test_cli_on_the_same_database(tmp_path, capsys):
    base = ["--data-dir", str(tmp_path)]
    assert thrifty.cli.main(["teams", "create", "eng", *base]) == 0
    assert thrifty.cli.main(["keys", "create", "--team", "eng", "--json", *base]) == 0
    created = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert created["key"].startswith("sk-thr-")
    assert thrifty.cli.main(["budgets", "set", "--team", "eng", "--amount", "10", "--period", "daily", *base]) == 0
    assert thrifty.cli.main(["budgets", "set", "--team", "ghost", "--amount", "10", *base]) == 2
    assert "no team 'ghost'" in capsys.readouterr().err
    assert thrifty.cli.main(["budgets", "set", "--amount", "10", *base]) == 2
    assert thrifty.cli.main(["policies", "set", "--team", "eng", "--rules", "{bad", *base]) == 2
    assert thrifty.cli.main(["keys", "revoke", created["id"], "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)["revoked_at"]
    assert thrifty.cli.main(["spend", "--group-by", "model", *base]) == 0
