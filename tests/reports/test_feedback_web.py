"""POST /v1/feedback and the dashboard's HTTP surface (auth, sessions, bad input), over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from reports.conftest import ADMIN_KEY


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.url, timeout=30, follow_redirects=False) as c:
        yield c


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _stored(live, request_id: str):
    db = live.db()
    try:
        return db.one("SELECT score, comment, key_id FROM feedback WHERE request_id = ?", (request_id,))
    finally:
        db.close()


def test_feedback_is_stored_with_the_ledger_record(live, client):
    mine = next(s for s in live.sent if s.key_name == "bob-key")
    r = client.post("/v1/feedback", headers=_bearer(live.keys["bob-key"]),
                    json={"request_id": mine.request_id, "score": 0.25, "comment": "too long"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body.pop("learned"), bool)  # whether the rating teaches the router (tests/router)
    assert body == {"object": "feedback", "request_id": mine.request_id, "score": 0.25, "model": mine.served}
    assert _stored(live, mine.request_id) == (0.25, "too long", live.key_ids["bob-key"])
    # Rating again replaces the rating; thumbs map to 1/0.
    r = client.post("/v1/feedback", headers=_bearer(live.keys["bob-key"]),
                    json={"request_id": mine.request_id, "thumbs": "up"})
    assert r.status_code == 200 and _stored(live, mine.request_id)[0] == 1.0
    # The feedback joins the ledger by request id: quality per model.
    db = live.db()
    try:
        row = db.one("SELECT l.served_model, f.score FROM ledger l JOIN feedback f ON f.request_id = l.request_id"
                     " WHERE l.request_id = ?", (mine.request_id,))
    finally:
        db.close()
    assert row == (mine.served, 1.0)


def test_feedback_on_someone_elses_request_is_not_found(live, client):
    theirs = next(s for s in live.sent if s.key_name == "ada-key")
    r = client.post("/v1/feedback", headers=_bearer(live.keys["bob-key"]),
                    json={"request_id": theirs.request_id, "thumbs": "down"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # The admin key may rate any request.
    r = client.post("/v1/feedback", headers=_bearer(ADMIN_KEY), json={"request_id": theirs.request_id, "score": 1})
    assert r.status_code == 200


@pytest.mark.parametrize("body,status,code", [
    ({"score": 1}, 400, "missing_required_parameter"),
    ({"request_id": "x"}, 400, "missing_required_parameter"),
    ({"request_id": "x", "score": 1, "thumbs": "up"}, 400, "missing_required_parameter"),
    ({"request_id": "x", "score": 1.5}, 400, "invalid_value"),
    ({"request_id": "x", "score": True}, 400, "invalid_value"),
    ({"request_id": "x", "thumbs": "sideways"}, 400, "invalid_value"),
    ({"request_id": "x", "score": 1, "comment": "c" * 3000}, 400, "invalid_value"),
    ({"request_id": "x", "score": 1, "extra": 1}, 400, "unknown_parameter"),
    ({"request_id": "no-such-request", "score": 1}, 404, "not_found"),
    ([1, 2], 400, "invalid_type"),
])
def test_feedback_bad_input_gets_the_api_error_format(live, client, body, status, code):
    r = client.post("/v1/feedback", headers=_bearer(live.keys["ada-key"]), json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


def test_feedback_needs_a_key_and_post(live, client):
    assert client.post("/v1/feedback", json={"request_id": "x", "score": 1}).status_code == 401
    r = client.post("/v1/feedback", headers=_bearer(live.keys["ada-key"]), content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.get("/v1/feedback", headers=_bearer(live.keys["ada-key"]))
    assert r.status_code == 405 and "error" in r.json()


def test_ui_needs_the_admin_key(live, client):
    r = client.get("/ui/")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert client.get("/ui/api/report").status_code == 401
    assert client.get("/ui/api/report", headers=_bearer(live.keys["ada-key"])).status_code == 401
    r = client.get("/ui/api/report", headers=_bearer(ADMIN_KEY))
    assert r.status_code == 200 and r.json()["totals"]["requests"] == len(live.sent)
    # A session cookie from the login form; a forged one is refused.
    r = client.post("/ui/login", data={"admin_key": ADMIN_KEY, "next": "/ui/keys"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/keys"
    cookie = r.cookies["thrifty_ui"]
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    payload, mac = cookie.split(".")
    for value, status in ((cookie, 200), (payload + "." + mac[::-1], 303), ("garbage", 303)):
        with httpx.Client(base_url=live.url, cookies={"thrifty_ui": value}, follow_redirects=False) as fresh:
            assert fresh.get("/ui/keys").status_code == status
    # An open redirect through ?next= is not possible.
    r = client.post("/ui/login", data={"admin_key": ADMIN_KEY, "next": "https://example.com/"})
    assert r.headers["location"] == "/ui/"


@pytest.mark.parametrize("query,message", [
    ("since=notadate", "not a date"),
    ("by=colour", "group by"),
    ("since=2026-11-10&until=2026-11-01", "empty"),
])
def test_ui_bad_filters_are_clear_errors(live, client, query, message):
    r = client.get(f"/ui/?{query}", headers=_bearer(ADMIN_KEY))
    assert r.status_code == 400 and message in r.text and "Traceback" not in r.text
    r = client.get(f"/ui/api/report?{query}", headers=_bearer(ADMIN_KEY))
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_ui_static_assets_ship_with_the_package(live, client):
    for name in ("chart.umd.min.js", "app.js", "style.css", "LICENSE-chart.js.md"):
        r = client.get(f"/ui/static/{name}")
        assert r.status_code == 200 and len(r.content) > 100
    assert client.get("/ui/static/../web.py").status_code == 404
    assert client.get("/ui/nope", headers=_bearer(ADMIN_KEY)).status_code == 404


def test_quality_per_model_from_feedback_in_the_report(live, client, capsys):
    import json

    from thrifty.cli import main

    for s in [s for s in live.sent if s.key_name == "bob-key"][:6]:
        r = client.post("/v1/feedback", headers=_bearer(live.keys["bob-key"]),
                        json={"request_id": s.request_id, "score": 0.75})
        assert r.status_code == 200
    assert main(["report", "--database-url", live.db_url, "--format", "json"]) == 0
    per_model = {q["model"]: q for q in json.loads(capsys.readouterr().out)["feedback"]}
    db = live.db()
    try:
        expected = db.all("SELECT l.served_model, COUNT(*), AVG(f.score) FROM feedback f"
                          " JOIN ledger l ON l.request_id = f.request_id GROUP BY l.served_model")
    finally:
        db.close()
    assert len(expected) >= 1 and sum(int(n) for _m, n, _a in expected) >= 6
    assert set(per_model) == {m for m, _n, _a in expected}
    for m, n, a in expected:
        assert per_model[m]["rated"] == int(n) and per_model[m]["mean_score"] == pytest.approx(float(a))


def test_dashboard_and_feedback_on_a_postgres_gateway(pg_url, tmp_path):
    """The same HTTP surface with the spend database on PostgreSQL (the dialect the web app, the
    rollup and the feedback table also support)."""
    import asyncio

    from reports.conftest import _send, demo_prompts
    from thrifty.config import build_config, default_document
    from thrifty.gateway.assemble import build_spend, create_app
    from thrifty.spend.db import Database
    from thrifty.testing.server import running

    doc = default_document(env={})
    doc["providers"]["replay"]["source"] = "packaged"
    doc["data_dir"] = str(tmp_path)
    doc["spend"] = {"admin_key": ADMIN_KEY, "database_url": pg_url}
    config = build_config(doc, data_dir=tmp_path, env={})
    spend, mounts = build_spend(config)
    with (
        running(create_app(config, spend=spend, mounts=mounts)) as url,
        httpx.Client(base_url=url, headers=_bearer(ADMIN_KEY), timeout=30) as admin,
    ):
        admin.post("/admin/teams", json={"id": "t1"}).raise_for_status()
        key = admin.post("/admin/keys", json={"name": "k", "team_id": "t1"}).json()["key"]
        admin.post("/admin/budgets", json={"scope": "team", "scope_id": "t1", "amount_usd": 50}).raise_for_status()
        sent = asyncio.run(_send(url, key, "auto", demo_prompts()[:15]))
        r = httpx.post(url + "/v1/feedback", headers=_bearer(key), json={"request_id": sent[0][0], "thumbs": "up"})
        assert r.status_code == 200, r.text
        for page in ("/ui/", "/ui/budgets", "/ui/keys", "/ui/live", "/ui/api/live"):
            assert admin.get(page).status_code == 200, page
        doc = admin.get("/ui/api/report", params={"team": "t1", "by": "model"}).json()
    db = Database(pg_url)
    try:
        n, cost = db.one("SELECT COUNT(*), SUM(cost_nanos) FROM ledger WHERE team_id = 't1'")
    finally:
        db.close()
    assert (doc["totals"]["requests"], doc["totals"]["cost_nanos"]) == (15, int(cost)) and n == 15
    assert doc["feedback"][0]["rated"] == 1 and doc["budgets"][0]["spent_nanos"] == int(cost)
