"""``auto`` on a pool the packaged router has never seen, through the real app over HTTP: it
serves from the first request, learns from ``POST /v1/feedback`` per kind of prompt, keeps what
it learnt across a restart (SQLite) and shares it between two replicas (PostgreSQL), and never
leaves policy."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from thrifty.config import build_config
from thrifty.gateway.assemble import build_app
from thrifty.spend import admin_ops
from thrifty.spend.db import Database
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running

POOL = {  # names no benchmark has: the packaged router knows none of them
    "acme-small": (1e-7, 2e-7),
    "acme-medium": (1e-6, 3e-6),
    "acme-large": (1e-5, 3e-5),
}
CODE = ["Write a Python function named {} that parses a CSV file and returns the rows as dicts.",
        "Implement {} in Rust: a lock-free queue with push and pop, with unit tests.",
        "Fix this JavaScript: function {}(a, b) {{ return a.map(x => x + b) }} throws on undefined.",
        "Write a SQL query called {} that finds the top 5 customers by revenue per month."]
CHAT = ["Tell me a short joke about {}.", "What is a nice name for a cat that likes {}?",
        "Say hello to my friend {} in a cheerful way.", "Give me one fun fact about {}."]
WORDS = ["parrots", "tea", "mountains", "jazz", "autumn", "bicycles", "pancakes", "rain", "owls", "cheese",
         "boats", "lamps", "violins", "dunes", "maple", "comets"]


def prompts(kind: str, n: int, rng: random.Random) -> list[str]:
    templates = CODE if kind == "code" else CHAT
    return [rng.choice(templates).format(rng.choice(WORDS) + str(rng.randint(0, 999))) for _ in range(n)]


def pool_doc(tmp: Path, upstream: FakeUpstream, db_url: str | None, **router: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "data_dir": str(tmp),
        "providers": {"pool": {"type": "openai", "base_url": upstream.base_url, "api_key": "sk-up"}},
        "models": {name: {"provider": "pool", "input_cost_per_token": a, "output_cost_per_token": b}
                   for name, (a, b) in POOL.items()},
        "router": {"warmup_labels": 3, "sync_s": 0.2, "seed": 1, **router},
        "spend": {"admin_key": "sk-thr-admin-learning"},
    }
    if db_url:
        doc["spend"]["database_url"] = db_url
    return doc


def gateway(doc: dict[str, Any], team: str = "t") -> tuple[Any, Any, str]:
    app, spend = build_app(build_config(doc))
    if not any(t["id"] == team for t in admin_ops.list_teams(spend.db)):
        admin_ops.create_team(spend.db, team)
    _, key = admin_ops.create_key(spend.db, team_id=team)
    spend.reload()
    return app, spend, key


def ask(c: httpx.Client, key: str, prompt: str) -> httpx.Response:
    r = c.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
               json={"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    return r


def rate(c: httpx.Client, key: str, r: httpx.Response, kind: str) -> None:
    """The pool's truth: only the large model writes good code; every model chats well."""
    served = r.headers["x-thrifty-model"]
    score = 1.0 if kind == "chat" or served == "acme-large" else 0.0
    f = c.post("/v1/feedback", headers={"authorization": f"Bearer {key}"},
               json={"request_id": r.headers["x-request-id"], "score": score})
    assert f.status_code == 200, f.text
    assert f.json()["learned"] is True


def traffic(c: httpx.Client, key: str, n: int, rng: random.Random, *, feedback: bool) -> dict[str, Counter]:
    served: dict[str, Counter] = {"code": Counter(), "chat": Counter()}
    for _ in range(n):
        kind = rng.choice(["code", "chat"])
        r = ask(c, key, prompts(kind, 1, rng)[0])
        served[kind][r.headers["x-thrifty-model"]] += 1
        if feedback:
            rate(c, key, r, kind)
    return served


def test_an_unseen_pool_routes_from_the_first_request_and_learns_per_kind_of_prompt(upstream, tmp_path):
    rng = random.Random(7)
    db_url = f"sqlite:///{tmp_path / 'spend.sqlite3'}"
    app, _spend, key = gateway(pool_doc(tmp_path, upstream, db_url))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        first = ask(c, key, "What is the capital of France?")  # request one: served, not refused
        assert first.headers["x-thrifty-model"] in POOL
        assert "learned from 0 rating(s)" in first.headers["x-thrifty-route-reason"]
        traffic(c, key, 400, rng, feedback=True)
        late = traffic(c, key, 100, rng, feedback=True)
    # Code went to the one model rated well on code; chat to a cheap one (all are good at it).
    # Which of the two cheap ones is a matter of which one's chat ratings came first: with other
    # [router] seeds (2, 3, 4) it was acme-medium in 2 of 3, with the caution per model as on the traffic.
    assert late["code"]["acme-large"] >= 0.7 * sum(late["code"].values()), late
    cheap = late["chat"]["acme-small"] + late["chat"]["acme-medium"]
    assert cheap >= 0.7 * sum(late["chat"].values()), late
    # Every routed row carries its context and the probability its model was chosen with.
    db = Database(db_url)  # the app's own handle closed with it (its ledger flushed)
    rows = db.all("SELECT route_context, route_propensity, route_explored FROM ledger WHERE requested_model = 'auto'")
    assert len(rows) == 501 and all(r[0] and 0 < r[1] <= 1 for r in rows)
    assert any(r[2] for r in rows)  # some decisions explored
    labels = db.one("SELECT COUNT(*) FROM router_labels WHERE source = 'feedback'")[0]
    db.close()
    assert labels == 500

    # A restart keeps what was learnt: the first requests after it already route by it.
    app2, _spend2, key2 = gateway(pool_doc(tmp_path, upstream, db_url, explore=False))
    with running(app2) as url, httpx.Client(base_url=url, timeout=30) as c:
        code = [ask(c, key2, p) for p in prompts("code", 10, rng)]
        chat = [ask(c, key2, p) for p in prompts("chat", 10, rng)]
    assert all(r.headers["x-thrifty-model"] == "acme-large" for r in code), [r.headers["x-thrifty-model"] for r in code]
    assert all(r.headers["x-thrifty-model"] in ("acme-small", "acme-medium") for r in chat)
    assert "learned from 500 rating(s)" in code[0].headers["x-thrifty-route-reason"]


def test_learning_never_routes_outside_policy(upstream, tmp_path):
    rng = random.Random(3)
    db_url = f"sqlite:///{tmp_path / 'spend.sqlite3'}"
    app, spend, key = gateway(pool_doc(tmp_path, upstream, db_url))
    admin_ops.create_team(spend.db, "no-large")
    admin_ops.set_policy(spend.db, "team", "no-large", {"deny_models": ["acme-large"]})
    _, denied_key = admin_ops.create_key(spend.db, team_id="no-large")
    spend.reload()
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        traffic(c, key, 150, rng, feedback=True)  # learns that only acme-large codes well
        served = traffic(c, denied_key, 60, rng, feedback=False)
    assert "acme-large" not in served["code"] and "acme-large" not in served["chat"], served


def test_feedback_on_a_named_model_is_stored_but_teaches_nothing(upstream, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'spend.sqlite3'}"
    app, _spend, key = gateway(pool_doc(tmp_path, upstream, db_url))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "acme-small", "messages": [{"role": "user", "content": "hi"}]})
        f = c.post("/v1/feedback", headers={"authorization": f"Bearer {key}"},
                   json={"request_id": r.headers["x-request-id"], "score": 1})
    assert f.status_code == 200 and f.json()["learned"] is False
    db = Database(db_url)
    assert db.one("SELECT COUNT(*) FROM router_labels")[0] == 0
    db.close()


def test_two_replicas_on_postgres_share_what_is_learnt(upstream, tmp_path, pg_url):
    rng = random.Random(11)
    a_app, _a_spend, key = gateway(pool_doc(tmp_path / "a", upstream, pg_url))
    b_app, _b_spend, key_b = gateway(pool_doc(tmp_path / "b", upstream, pg_url, explore=False))
    with running(a_app) as a_url, running(b_app) as b_url, \
            httpx.Client(base_url=a_url, timeout=30) as a, httpx.Client(base_url=b_url, timeout=30) as b:
        before = ask(b, key_b, prompts("code", 1, rng)[0])
        assert "learned from 0 rating(s)" in before.headers["x-thrifty-route-reason"]
        traffic(a, key, 200, rng, feedback=True)  # every rating lands on replica A
        deadline = time.monotonic() + 10
        while True:  # replica B loads A's labels within its sync period (0.2 s)
            r = ask(b, key_b, prompts("code", 1, rng)[0])
            if "learned from 0 " not in r.headers["x-thrifty-route-reason"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        code = [ask(b, key_b, p).headers["x-thrifty-model"] for p in prompts("code", 10, rng)]
    assert "learned from 0 " not in r.headers["x-thrifty-route-reason"]
    assert Counter(code)["acme-large"] >= 8, code


@pytest.fixture()
def pg_url() -> Iterator[str]:
    from service_urls import fresh_database, postgres_url

    url = postgres_url()
    if url is None:
        pytest.skip("no test PostgreSQL (scripts/test-services.sh starts one)")
    yield from fresh_database(url)


def test_team_scope_learns_per_team(upstream, tmp_path):
    """``learning_scope = "team"``: one team's ratings teach its own routing, not another's."""
    rng = random.Random(5)
    db_url = f"sqlite:///{tmp_path / 'spend.sqlite3'}"
    app, spend, key = gateway(pool_doc(tmp_path, upstream, db_url, learning_scope="team"), team="rater")
    admin_ops.create_team(spend.db, "other")
    _, other_key = admin_ops.create_key(spend.db, team_id="other")
    spend.reload()
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        traffic(c, key, 60, rng, feedback=True)
        mine = ask(c, key, prompts("code", 1, rng)[0]).headers["x-thrifty-route-reason"]
        theirs = ask(c, other_key, prompts("code", 1, rng)[0]).headers["x-thrifty-route-reason"]
    assert "learned from 60 rating(s)" in mine
    assert "learned from 0 rating(s)" in theirs
