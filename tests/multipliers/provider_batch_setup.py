"""Shared setup of the provider-batch crash tests: a gateway (``thrifty serve`` in its own
process, or its state in this one as :class:`Front`) in front of the fake upstream's OpenAI batch
API, a team with a budget, and readers of the ledger, the batch store and what is held."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
from batch_setup import PRICE

from thrifty.config import build_config
from thrifty.gateway.assemble import create_app
from thrifty.multipliers.batches import line_request_id
from thrifty.multipliers.settings import BatchSettings
from thrifty.pipeline.schemas import ChatRequest
from thrifty.spend import admin_ops
from thrifty.spend.contract import Principal
from thrifty.spend.control import DbSpendControl
from thrifty.spend.db import Database
from thrifty.spend.money import format_usd
from thrifty.spend.schema import migrate
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.loadtest import _toml_value

N = 3
MODEL = {
    "provider": "bp",
    "upstream_model": "m-up",
    "route": False,
    **PRICE,
    "input_cost_per_token_batches": 0.5e-6,
    "output_cost_per_token_batches": 1e-6,
}
PROBE = {"model": "m-batch", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def team(db_url: str) -> tuple[str, dict[str, Any]]:
    """Team t with a $10 monthly budget, and a key of it."""
    db = Database(db_url)
    migrate(db)
    admin_ops.create_team(db, "t")
    _, key = admin_ops.create_key(db, team_id="t")
    budget = admin_ops.set_budget(db, "team", "t", amount_usd="10", period="monthly")
    db.close()
    return key, budget


def set_budget(db_url: str, usd: str) -> None:
    db = Database(db_url)
    admin_ops.set_budget(db, "team", "t", amount_usd=usd, period="monthly")
    db.close()


def wait_for(cond, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def batch_lines(db_url: str) -> list[tuple]:
    """(line, submission, upstream) of every batch line in the spend database at ``db_url``."""
    db = Database(db_url)
    try:
        return [tuple(r) for r in db.all("SELECT line, submission, upstream FROM batch_lines ORDER BY line")]
    finally:
        db.close()


def ledger_rows(db_url: str, budget_id: str) -> tuple[list[tuple], int]:
    """The batch lines' ledger rows (refused requests are in the ledger too: left out here)."""
    db = Database(db_url)
    rows = db.all(
        "SELECT request_id, cost_nanos, batch, status FROM ledger WHERE batch = 1 "
        "ORDER BY request_id"
    )
    spent = db.one("SELECT sum(spent_nanos) FROM budget_spend WHERE budget_id = ?", (budget_id,))[0]
    db.close()
    return [tuple(r) for r in rows], int(spent or 0)


# -- real processes ------------------------------------------------------------------------


def serve_config(tmp: Path, fake: FakeUpstream, db_url: str) -> Path:
    data = tmp / "front"
    data.mkdir(exist_ok=True)
    doc: list[str] = [
        f"data_dir = {json.dumps(str(data))}",
        'frontier_model = "m-batch"',
        "",
        "[retry]",
        "attempts = 1",
        "backoff_base = 0.01",
        "backoff_max = 0.02",
        "",
        "[spend]",
        f"database_url = {json.dumps(db_url)}",
        "poll_interval_s = 0.1",
        "",
        "[batches]",
        "poll = 0.05",
        "lease = 1.0",  # a replica that died: its batches are resumed after a second
        "",
        "[providers.bp]",
        'type = "openai"',
        f"base_url = {json.dumps(fake.base_url)}",
        "batch_api = true",
        "",
        "[models.m-batch]",
        *(f"{k} = {_toml_value(v)}" for k, v in MODEL.items()),
        "",
    ]
    path = tmp / "front.toml"
    path.write_text("\n".join(doc))
    return path


def held_usd(url: str, key: str, db_url: str, spent: int) -> str:
    """What the gateway at ``url`` holds for team t, as its budget refusal says: the budget is
    set to exactly what is spent, so that the probe request is refused and says what is held."""
    set_budget(db_url, f"{spent / 1e9:.9f}")
    time.sleep(1.0)  # the gateway reloads budgets every 0.1 s
    r = httpx.post(
        url + "/v1/chat/completions", json=PROBE, headers={"authorization": f"Bearer {key}"}
    )
    set_budget(db_url, "10")
    assert r.status_code == 429, r.text
    m = re.search(r"(\$[0-9.]+) is spent and (\$[0-9.]+) is held", r.json()["error"]["message"])
    assert m, r.text
    assert m.group(1) == format_usd(spent)
    return m.group(2)


def tagged(fake: FakeUpstream, batch_id: str) -> list[dict]:
    return [
        b
        for b in fake.state.batches.values()
        if str((b.get("metadata") or {}).get("thrifty_submission", "")).startswith(f"thrifty-{batch_id}-")
    ]


def check_once(r: dict, fake: FakeUpstream) -> None:
    """The provider has one batch of the lines and ran each once; each is billed once, at
    batch prices; the budget counts exactly the ledger, and nothing is held."""
    rids = [line_request_id(r["batch"], i) for i in range(N)]
    assert len(tagged(fake, r["batch"])) == 1, list(fake.state.batches)
    assert len(fake.state.batches) == 1
    assert sorted(fake.state.batch_runs) == rids  # the provider ran (and charges) each line once
    assert r["done"].request_counts.completed == N and r["done"].request_counts.failed == 0
    assert sorted(x["custom_id"] for x in r["out"]) == [f"req-{i}" for i in range(N)]
    assert [row[0] for row in r["rows"]] == rids  # billed once each
    assert all(row[1] > 0 and row[2] == 1 and row[3] == 200 for row in r["rows"])
    assert r["spent"] == sum(row[1] for row in r["rows"])
    assert r["held"] == format_usd(0)


class Front:
    """A gateway process's worth of state (in this process) on ``db_url``, with a 1 s hold_ttl."""

    def __init__(self, tmp: Path, fake: FakeUpstream, db_url: str) -> None:
        self.db_url = db_url
        self.spend = DbSpendControl(db_url, tmp / "journal", hold_ttl=1.0, poll_interval=0.1)
        config = build_config(
            {
                "data_dir": str(tmp / "front"),
                "frontier_model": "m-batch",
                "providers": {"bp": {"type": "openai", "base_url": fake.base_url, "batch_api": True}},
                "models": {"m-batch": MODEL},
            },
            env={},
        )
        config.cache, config.batches = None, BatchSettings(poll=0.05)
        self.app = create_app(config, spend=self.spend)

    def held(self) -> int:
        """What the spend control counts as held now (PostgreSQL: unexpired reservations)."""
        if not self.spend.postgres:
            return sum(self.spend.budgets._held.values())
        db = Database(self.db_url)
        try:
            return int(
                db.one(
                    "SELECT coalesce(sum(amount_nanos), 0) FROM reservations WHERE expires_at > ?",
                    (time.time(),),
                )[0]
            )
        finally:
            db.close()

    def refused(self, url: str, key: str, held: int) -> httpx.Response:
        """A chat request, with the budget set to what is held plus half what the request could
        cost: refused while the holds count."""
        principal = Principal(key_id=None, team_id="t")
        request_max = self.app.gw.plan_chat(principal, ChatRequest(dict(PROBE))).max_cost_usd
        admin_ops.set_budget(
            self.spend.db, "team", "t", amount_usd=f"{held / 1e9 + request_max / 2:.9f}", period="monthly"
        )
        self.spend.reload()
        try:
            return httpx.post(
                url + "/v1/chat/completions", json=PROBE, headers={"authorization": f"Bearer {key}"}
            )
        finally:
            admin_ops.set_budget(self.spend.db, "team", "t", amount_usd="10", period="monthly")
            self.spend.reload()
