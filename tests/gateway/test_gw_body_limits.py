"""max_body_bytes holds on every endpoint, not only the model calls: the admin API, /v1/feedback,
/v1/batches, /v1/files and the dashboard answer 413 in their own format, whether the body
declares its length or comes chunked, and never read more of it than the limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest
from gw_openai_schema import SPEC, validate
from gw_setup import gateway_doc

from thrifty.bodylimit import limit_body
from thrifty.config import build_config
from thrifty.gateway.assemble import build_spend, create_app
from thrifty.multipliers.settings import BatchSettings
from thrifty.spend import admin_ops
from thrifty.testing.server import running

ADMIN = "sk-thr-admin-body-limits"
LIMIT = 4096


@pytest.fixture(scope="module")
def served(upstreams, tmp_path_factory) -> Iterator[tuple[str, str]]:
    doc = gateway_doc(upstreams, tmp_path_factory.mktemp("limits"))
    doc["spend"] = {"admin_key": ADMIN}
    doc["max_body_bytes"] = LIMIT
    config = build_config(doc, env={})
    config.batches = BatchSettings(poll=0.05)
    spend, mounts = build_spend(config)
    admin_ops.create_team(spend.db, "lim")
    _, key = admin_ops.create_key(spend.db, team_id="lim")
    spend.reload()
    app = create_app(config, spend=spend, mounts=mounts)
    with running(app) as url:
        yield url, key


def _chunked(total: int, chunk: int = 1024) -> Iterator[bytes]:
    """A body without Content-Length (httpx sends a generator chunked)."""
    sent = 0
    while sent < total:
        sent += chunk
        yield b" " * chunk


def _openai_413(r: httpx.Response) -> None:
    assert r.status_code == 413, (r.status_code, r.text[:300])
    doc = r.json()
    if SPEC.is_file():
        validate(doc, "ErrorResponse")
    assert doc["error"]["code"] == "request_too_large"
    assert doc["error"]["type"] == "invalid_request_error"
    assert str(LIMIT) in doc["error"]["message"]


def test_admin_api_refuses_big_bodies_in_its_own_format(served):
    url, _ = served
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    big = b'{"id": "t", "name": "' + b"x" * LIMIT + b'"}'
    for content in (big, _chunked(LIMIT * 4)):  # declared length, then chunked
        r = httpx.post(url + "/admin/teams", content=content, headers=admin)
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}  # the one OpenAI-style error document
        assert err["code"] == "request_too_large" and str(LIMIT) in err["message"]
    # Unauthenticated too: the limit comes before anything else is done with the body.
    assert httpx.post(url + "/admin/teams", content=big).status_code == 413
    # Within the limit the admin API works as before.
    ok = httpx.post(url + "/admin/teams", json={"id": "small", "name": "x" * 100}, headers=admin)
    assert ok.status_code == 201, ok.text
    assert httpx.get(url + "/admin/teams", headers=admin).status_code == 200


def test_feedback_refuses_big_bodies_in_openai_format(served):
    url, key = served
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    big = orjson.dumps({"request_id": "r", "score": 1, "comment": "x" * LIMIT})
    _openai_413(httpx.post(url + "/v1/feedback", content=big, headers=auth))
    _openai_413(httpx.post(url + "/v1/feedback", content=_chunked(LIMIT * 4), headers=auth))
    # A small body still reaches the endpoint (an unknown request id is its own 404).
    r = httpx.post(url + "/v1/feedback", json={"request_id": "nope", "score": 1}, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_batches_and_files_are_limited(served):
    url, key = served
    auth = {"authorization": f"Bearer {key}"}
    _openai_413(httpx.post(url + "/v1/batches", content=b"{" + b" " * LIMIT + b"}", headers=auth))
    _openai_413(httpx.post(url + "/v1/batches", content=_chunked(LIMIT * 4), headers=auth))
    # A batch input file may be larger than max_body_bytes (up to the batch file limit).
    line = orjson.dumps(
        {
            "custom_id": "c",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m-ok", "messages": [{"role": "user", "content": "x" * LIMIT}]},
        }
    )
    r = httpx.post(
        url + "/v1/files",
        files={"file": ("in.jsonl", line + b"\n")},
        data={"purpose": "batch"},
        headers=auth,
    )
    assert r.status_code == 200 and r.json()["bytes"] > LIMIT, r.text


def test_dashboard_login_is_limited(served):
    url, _ = served
    r = httpx.post(
        url + "/ui/login",
        content=b"key=" + b"x" * LIMIT,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413 and str(LIMIT) in r.text


def test_model_endpoints_keep_their_limit(served):
    url, key = served
    body = orjson.dumps({"model": "m-ok", "messages": [{"role": "user", "content": "x" * LIMIT}]})
    r = httpx.post(
        url + "/v1/chat/completions", content=body, headers={"authorization": f"Bearer {key}"}
    )
    _openai_413(r)


def test_limit_stops_reading_at_the_limit():
    """In-process: a chunked body is read only until it passes the limit, and a body within
    the limit reaches the app chunk by chunk, unchanged."""
    seen: list[bytes] = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(seen)})

    def run(total_chunks: int, chunk: bytes) -> tuple[int, int, bytes]:
        reads = 0

        async def receive():
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": chunk, "more_body": reads < total_chunks}

        out: dict = {}

        async def send(message):
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            else:
                out["body"] = message.get("body", b"")

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        asyncio.run(limit_body(app, 1000)(scope, receive, send))
        return out["status"], reads, out["body"]

    status, reads, body = run(10_000, b"x" * 100)  # 1 MB offered
    assert status == 413 and reads == 11  # 1,100 bytes read, not 1 MB
    assert orjson.loads(body)["error"]["code"] == "request_too_large"
    seen.clear()
    status, reads, body = run(5, b"y" * 100)
    assert status == 200 and body == b"y" * 500 and len(seen) == 5
    with pytest.raises(ValueError):
        limit_body(app, 0)
