"""A real gateway (embedded default: replay providers, packaged router, real spend control on
SQLite) on a loopback server, with teams, keys and a budget made through the admin API, and
real RouterBench demo prompts sent through it with the openai client.

The ledger it leaves behind is what the report, simulate, feedback and dashboard tests read.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

ADMIN_KEY = "sk-thr-admin-reports-test"
ROOT = pathlib.Path(__file__).resolve().parents[2]
N_AUTO = 90  # demo prompts sent through "auto" by the research team
N_CHEAP = 30  # further demo prompts sent through "auto-cheap" by the support team


@dataclass
class Sent:
    request_id: str
    key_name: str
    profile: str
    prompt: str
    served: str
    cost_header: float


@dataclass
class LiveGateway:
    url: str
    db_url: str
    data_dir: pathlib.Path
    spend: Any
    keys: dict[str, str]  # name -> secret
    key_ids: dict[str, str]  # name -> key id
    sent: list[Sent] = field(default_factory=list)

    def db(self) -> Any:
        from thrifty.spend.db import Database

        self.spend.flush()
        return Database(self.db_url)


def demo_prompts() -> list[str]:
    from thrifty.providers.replay_records import read_packaged

    seen: dict[str, str] = {}
    for r in read_packaged():
        seen.setdefault(r.prompt.strip(), r.prompt)
    return list(seen.values())


async def _send(url: str, key: str, profile: str, prompts: list[str]) -> list[tuple[str, str, str, float]]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    sem = asyncio.Semaphore(6)

    async def one(prompt: str) -> tuple[str, str, str, float]:
        async with sem:
            raw = await client.chat.completions.with_raw_response.create(
                model=profile, messages=[{"role": "user", "content": prompt}])
            return (raw.headers["x-request-id"], prompt, raw.headers["x-thrifty-model"],
                    float(raw.headers["x-thrifty-cost-usd"]))

    try:
        return list(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await client.close()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    import httpx

    from thrifty.config import build_config, default_document
    from thrifty.gateway.assemble import build_spend, create_app
    from thrifty.testing.server import running

    tmp = tmp_path_factory.mktemp("reports-gw")
    doc = default_document(env={})
    doc["providers"]["replay"]["source"] = "packaged"
    doc["data_dir"] = str(tmp)
    doc["spend"] = {"admin_key": ADMIN_KEY}
    config = build_config(doc, data_dir=tmp, env={})
    spend, mounts = build_spend(config)
    assert "/ui" in mounts and "/v1/feedback" in mounts
    app = create_app(config, spend=spend, mounts=mounts)
    prompts = demo_prompts()
    with running(app) as url:
        admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        keys, key_ids = {}, {}
        for team in ("research", "support"):
            admin.post("/admin/teams", json={"id": team}).raise_for_status()
        for user, team in (("ada", "research"), ("bob", "support")):
            admin.post("/admin/users", json={"id": user, "team_id": team}).raise_for_status()
        for name, user in (("ada-key", "ada"), ("bob-key", "bob")):
            r = admin.post("/admin/keys", json={"name": name, "user_id": user, "tags": [f"app-{user}"]})
            r.raise_for_status()
            keys[name], key_ids[name] = r.json()["key"], r.json()["id"]
        # A fixed window (not monthly), so a test running across midnight at a month's end still holds.
        admin.post("/admin/budgets", json={"scope": "team", "scope_id": "research", "amount_usd": 2,
                                           "period": "window", "window_start": time.time() - 3600}).raise_for_status()
        gw = LiveGateway(url, spend.db_url, tmp, spend, keys, key_ids)
        for key_name, profile, chunk in (("ada-key", "auto", prompts[:N_AUTO]),
                                         ("bob-key", "auto-cheap", prompts[N_AUTO:N_AUTO + N_CHEAP])):
            for rid, prompt, served, cost in asyncio.run(_send(url, keys[key_name], profile, chunk)):
                gw.sent.append(Sent(rid, key_name, profile, prompt, served, cost))
        spend.flush()
        yield gw
        admin.close()
    # The gateway's lifespan shutdown closed the spend control.


@pytest.fixture(scope="session")
def artifacts() -> pathlib.Path:
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    return out


def fresh_name() -> str:
    return "t" + uuid.uuid4().hex[:8]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
