"""Test support (a module of its own: ``from conftest import`` is ambiguous across folders).

A real gateway (packaged replay models and router, spend control on SQLite) whose ``auto``
traffic was rated through ``POST /v1/feedback``: what ``thrifty router status``, ``learn`` and the
router metrics are checked against. Every decision's kind and cost is read from the responses."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

ADMIN = "sk-thr-admin-router-status"
TEAM = "lab"


@dataclass
class Routed:
    request_id: str
    model: str
    reason: str
    cost: float

    @property
    def kind(self) -> str:
        if "exploring" in self.reason:
            return "explored"
        return "learned" if "learned from" in self.reason else "packaged"


@dataclass
class Rated:
    url: str
    db_url: str
    app: Any
    spend: Any
    sent: list[Routed] = field(default_factory=list)
    feedback: dict[str, float] = field(default_factory=dict)  # request id -> score
    judge: dict[str, float] = field(default_factory=dict)  # request id -> grade (weight JUDGE_WEIGHT)
    extra_costs: list[float] = field(default_factory=list)  # Choice.extra_cost of every learned decision

    def db(self) -> Any:
        from thrifty.spend.db import Database

        self.spend.flush()
        return Database(self.db_url)


JUDGE_WEIGHT = 0.5


def _prompts() -> list[str]:
    from thrifty.providers.replay_records import read_packaged

    return list(dict.fromkeys(r.prompt for r in read_packaged()))


def rated_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rated]:
    """The gateway, its traffic sent and rated (a generator for a session fixture)."""
    import httpx
    from gw_setup import serve_gateway

    from thrifty.config import build_config, default_document
    from thrifty.gateway.assemble import build_spend
    from thrifty.router import labels

    tmp = tmp_path_factory.mktemp("router-status")
    doc = default_document(env={})
    doc["providers"]["replay"]["source"] = "packaged"
    doc["data_dir"] = str(tmp)
    doc["spend"] = {"admin_key": ADMIN}
    doc["router"] = {"explore_max_share": 0.5, "sync_s": 0.2}
    spend, mounts = build_spend(build_config(doc, data_dir=tmp, env={}))
    prompts = _prompts()
    with serve_gateway(doc, spend=spend, mounts=mounts) as (url, app):
        learner = app.gw.router.learner
        # The fixture exercises exploration (its caps and cost counter) within 60 learned
        # decisions: no cap on exploration's estimated quality loss, which would keep most of
        # these few decisions greedy.
        learner.explore_loss_share = None
        out = Rated(url, spend.db_url, app, spend)
        real_choose = learner.choose

        def recording(*args: Any, **kwargs: Any) -> Any:
            choice = real_choose(*args, **kwargs)
            out.extra_costs.append(choice.extra_cost)
            return choice

        learner.choose = recording
        admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)
        admin.post("/admin/teams", json={"id": TEAM}).raise_for_status()
        key = admin.post("/admin/keys", json={"name": "k", "team_id": TEAM}).json()["key"]
        client = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)

        def send(batch: list[str]) -> list[Routed]:
            got = []
            for p in batch:
                r = client.post("/v1/chat/completions",
                                json={"model": "auto", "messages": [{"role": "user", "content": p}]})
                r.raise_for_status()
                got.append(Routed(r.headers["x-request-id"], r.headers["x-thrifty-model"],
                                  r.headers["x-thrifty-route-reason"], float(r.headers["x-thrifty-cost-usd"])))
            out.sent += got
            return got

        def rate(batch: list[Routed], offset: int) -> None:
            for i, s in enumerate(batch):
                score = 1.0 if (i + offset) % 3 else 0.0
                r = client.post("/v1/feedback", json={"request_id": s.request_id, "score": score})
                r.raise_for_status()
                assert r.json()["learned"] is True
                out.feedback[s.request_id] = score

        first = send(prompts[:30])  # nothing learnt yet: the packaged router decides
        rate(first[:24], 0)
        second = send(prompts[30:90])  # learned decisions, some exploring (warm-up)
        rate(second[:30], 1)
        db = out.db()
        try:
            for s, grade in zip(second[40:44], (1.0, 0.0, 1.0, 1.0), strict=True):
                assert labels.store(db, s.request_id, "judge", grade, JUDGE_WEIGHT)
                out.judge[s.request_id] = grade
        finally:
            db.close()
        deadline = time.time() + 10
        while app.gw.metrics.router_labels.values.get(("judge",), 0) < len(out.judge) and time.time() < deadline:
            time.sleep(0.1)  # the sync loop loads what another process (here: the test) stored
        spend.flush()
        yield out
        client.close()
        admin.close()
