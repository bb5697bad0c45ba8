"""The budget race per billed field (issue 11.1), through real ``thrifty serve`` processes.

For every field a request can carry upstream (message text, tools, legacy functions, a
response_format schema, image parts, tool results, stop sequences, metadata, a field thrifty
does not know such as ``prediction``; tools through the Messages API, a schema through the
Responses API, embeddings input), 100 concurrent requests with that field large against a
$0.01 team budget, over an upstream that bills what it was sent (every byte a token, images by
OpenAI's documented maximum): what the upstream billed == the ledger == the budget counter ==
the costs the clients were told, never over the budget, no 5xx. On one gateway over SQLite and
on two replicas sharing PostgreSQL.
"""

from __future__ import annotations

import asyncio
import pathlib
from decimal import Decimal
from typing import Any

import httpx
import pytest
from adv_setup import ADMIN_KEY, PRICE, Gateway, make_keys, served_usd, write_toml

from thrifty.spend.db import Database
from thrifty.spend.money import nanos_to_usd, usd_to_nanos
from thrifty.testing.fake_upstream import FakeUpstream

BUDGET = "0.01"
N = 100
IMAGE_TOKENS = 85 + 8 * 170  # OpenAI's documented maximum for one gpt-4o image (high detail)
BIG = "lorem ipsum dolor sit amet " * 60  # 1,620 bytes: about $0.0017 of prompt per request
ASK = {"role": "user", "content": "Answer briefly."}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _bodies() -> dict[str, dict[str, Any]]:
    fn = {"name": "lookup", "description": BIG, "parameters": {"type": "object", "properties": {}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    return {
        "messages": {"messages": [{"role": "user", "content": BIG}]},
        "tools": {"messages": [ASK], "tools": [{"type": "function", "function": fn}]},
        "functions": {"messages": [ASK], "functions": [fn]},
        "response_format": {"messages": [ASK], "response_format": {
            "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "description": BIG}}}},
        "images": {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}] + [image] * 3}]},
        "tool_results": {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                                      {"role": "tool", "tool_call_id": "call_1", "content": BIG}]},
        "stop": {"messages": [ASK], "stop": [BIG[:400] + str(i) for i in range(4)]},
        "metadata": {"messages": [ASK], "metadata": {k: BIG[:500] for k in "abc"}},
        "unknown_field": {"messages": [ASK], "prediction": {"type": "content", "content": BIG}},
        # The other client formats: Anthropic's Messages API, OpenAI's Responses API, embeddings.
        "messages_api_tools": {"path": "/v1/messages", "messages": [ASK], "tools": [
            {"name": "lookup", "description": BIG, "input_schema": {"type": "object"}}]},
        "responses_api_schema": {"path": "/v1/responses", "input": "Answer briefly.", "text": {"format": {
            "type": "json_schema", "name": "s", "schema": {"type": "object", "description": BIG}}}},
        "embeddings_input": {"path": "/v1/embeddings", "model": "emb", "input": [BIG, BIG[:800]]},
    }


FIELDS = list(_bodies())


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream("ok", billing="body", image_tokens=IMAGE_TOKENS) as fake:
        yield fake


def _config(tmp: pathlib.Path, upstream: FakeUpstream, db_url: str, name: str) -> pathlib.Path:
    (tmp / name).mkdir(exist_ok=True)
    return write_toml(tmp / f"{name}.toml", {
        "data_dir": str(tmp / name),
        "retry": {"attempts": 1},
        "circuit_breaker": {"failures": 100000, "cooldown": 30},
        "spend": {"database_url": db_url, "poll_interval_s": 0.2},
        "providers": {"up": {"type": "openai", "base_url": upstream.base_url}},
        # upstream_model gpt-4o: the gateway holds OpenAI's per-image maximum for it.
        "models": {"m": {"provider": "up", "upstream_model": "gpt-4o", **PRICE, "route": False},
                   "emb": {"provider": "up", "mode": "embedding", **PRICE, "route": False}},
    })


async def _fire(urls: list[str], secret: str, body: dict[str, Any]) -> list[tuple[int, dict, dict]]:
    import aiohttp

    body = dict(body)
    path = body.pop("path", "/v1/chat/completions")
    if path == "/v1/embeddings":
        body.pop("max_tokens")
    elif path == "/v1/responses":
        body["max_output_tokens"] = body.pop("max_tokens")

    headers = {"authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=N),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(i: int) -> tuple[int, dict, dict]:
            async with session.post(urls[i % len(urls)] + path, json=body, headers=headers) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json(content_type=None)

        return await asyncio.gather(*(one(i) for i in range(N)))


def _race(title: str, urls: list[str], db_url: str, keys: dict[str, str], upstream: FakeUpstream
          ) -> dict[str, dict]:
    figures: dict[str, dict] = {}
    checks: dict[str, list[bool]] = {}  # per field: served some, refusals 429, rows, money equal, ...
    for field, body in _bodies().items():
        before = len(upstream.served)
        replies = asyncio.run(_fire(urls, keys[field], {"model": "m", "max_tokens": 20, **body}))
        billed = served_usd(upstream.served[before:])
        for url in urls:  # the ledger is journalled, then written in batches: /admin/spend flushes it
            assert httpx.get(url + "/admin/spend", headers=ADMIN, timeout=30).status_code == 200
        db = Database(db_url)
        nanos, rows, served_rows = db.one(
            "SELECT COALESCE(SUM(cost_nanos), 0), COUNT(*),"
            " COALESCE(SUM(CASE WHEN status = 200 THEN 1 ELSE 0 END), 0) FROM ledger WHERE team_id = ?",
            (field,),
        )
        spent = db.one("SELECT COALESCE(SUM(s.spent_nanos), 0) FROM budget_spend s JOIN budgets b"
                       " ON b.id = s.budget_id WHERE b.scope_id = ?", (field,))[0]
        held = db.one("SELECT COUNT(*) FROM reservations")[0] if db_url.startswith("postgresql") else 0
        db.close()
        ok = [r for r in replies if r[0] == 200]
        refused = [r for r in replies if r[0] != 200]
        told = sum(usd_to_nanos(h["x-thrifty-cost-usd"]) for _s, h, _b in ok)
        figures[field] = {"served": len(ok), "refused": len(refused), "upstream_usd": billed,
                          "ledger_usd": nanos_to_usd(int(nanos)), "budget_counter_usd": nanos_to_usd(int(spent)),
                          "5xx": sum(r[0] >= 500 for r in replies), "holds_left": int(held)}
        checks[field] = [
            bool(ok),
            all(st == 429 and "budget" in str(doc["error"]) for st, _h, doc in refused),
            # every request is a ledger row (refusals at no cost); the served ones are what the
            # upstream served
            int(rows) == len(replies) and int(served_rows) == len(ok) == len(upstream.served) - before,
            usd_to_nanos(billed) == int(nanos) == told == int(spent),
            int(nanos) <= usd_to_nanos(BUDGET),  # never over
            held == 0,
        ]
    _print(title, figures)  # every field's figures, then which ones broke
    broken = {f: c for f, c in checks.items() if not all(c)}
    assert not broken, broken
    return figures


def _print(title: str, figures: dict[str, dict]) -> None:
    print(title)
    for field, f in figures.items():
        print(f"  {field:20} served {f['served']:3} refused {f['refused']:3} upstream ${f['upstream_usd']:.6f}"
              f" ledger ${f['ledger_usd']:.6f} budget ${f['budget_counter_usd']:.6f} (of ${BUDGET})"
              f" 5xx {f['5xx']} holds left {f['holds_left']}")


def test_budget_race_per_field_sqlite(tmp_path, upstream):
    db_url = f"sqlite:///{tmp_path / 'gw' / 'spend.db'}"
    (tmp_path / "gw").mkdir()
    keys = make_keys(db_url, dict.fromkeys(FIELDS, BUDGET))
    with Gateway(_config(tmp_path, upstream, db_url, "gw"), tmp_path / "gw.log") as gw:
        _race("budget race, one gateway on SQLite:", [gw.url], db_url, keys, upstream)


def test_budget_race_per_field_two_replicas_postgres(tmp_path, upstream, pg_url):
    keys = make_keys(pg_url, dict.fromkeys(FIELDS, BUDGET))
    with Gateway(_config(tmp_path, upstream, pg_url, "a"), tmp_path / "a.log") as a, \
            Gateway(_config(tmp_path, upstream, pg_url, "b"), tmp_path / "b.log") as b:
        figures = _race("budget race, two replicas sharing PostgreSQL:", [a.url, b.url], pg_url, keys, upstream)
    assert sum(f["served"] for f in figures.values()) > len(FIELDS)  # more than one request a field
    assert all(Decimal(BUDGET) >= f["ledger_usd"] for f in figures.values())
