"""A batch's budget holds and costs survive a gateway restart, against the real spend control
(SQLite ledger, journal, in-memory budget holds):

* lines sent to a provider's batch API hold their maximum cost from submission; after a restart
  (a new app on the same database, journal and batch store) the holds are taken again before
  the gateway serves its first request, each line is billed at its real cost when the
  provider's results arrive, the budget counts exactly those costs, and no hold is left;
* a cancelled batch waits for the lines already in a provider's batch, so they are billed and
  their holds released;
* lines that run through the gateway are admitted one at a time and marked done with their
  answer before they are billed: a restart in between bills them from what was stored,
  exactly once, without calling the provider again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from batch_setup import (
    RETRY,
    Ledger,
    batch_app,
    front_config,
    gateway_process,
    provider_app,
    run_lines,
    submit,
)
from batch_setup import (
    jsonl as batch_jsonl,
)

from thrifty.gateway.app import GatewayApp
from thrifty.pipeline.schemas import ChatRequest
from thrifty.spend import admin_ops
from thrifty.spend.contract import Principal
from thrifty.spend.control import DbSpendControl
from thrifty.spend.money import usd_to_nanos
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running

N = 3


def jsonl(n: int, model: str) -> bytes:
    return batch_jsonl(n, model, question="question {}", max_tokens=50)


class Front:
    """One gateway process's worth of state: spend control on the shared SQLite files."""

    def __init__(self, tmp: Path, provider_url: str, upstream: FakeUpstream) -> None:
        self.spend = DbSpendControl(f"sqlite:///{tmp / 'spend.db'}", tmp / "journal")
        self.app = batch_app(front_config(tmp, provider_url, upstream, retry=RETRY), self.spend)

    def held(self) -> int:
        return sum(self.spend.budgets._held.values())


def gated_provider(
    tmp: Path, upstream: FakeUpstream, spend: Ledger
) -> tuple[GatewayApp, threading.Event]:
    """The provider, whose batch lines do not run until the returned event is set."""
    gate = threading.Event()
    provider = provider_app(tmp, upstream, spend)
    real = provider.runner.executor

    async def gated(*args: Any) -> Any:
        while not gate.is_set():
            await asyncio.sleep(0.02)
        return await real(*args)

    provider.runner.executor = gated
    return provider, gate


def team_t(tmp: Path) -> tuple[str, dict[str, Any]]:
    """Team t with a $10 monthly budget and a key (returned with the budget), in the front
    gateway's spend database."""
    setup = DbSpendControl(f"sqlite:///{tmp / 'spend.db'}", tmp / "journal")
    admin_ops.create_team(setup.db, "t")
    _, key = admin_ops.create_key(setup.db, team_id="t")
    budget = admin_ops.set_budget(setup.db, "team", "t", amount_usd="10", period="monthly")
    asyncio.run(setup.close())
    return key, budget


def _wait(cond, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_provider_batch_holds_and_costs_survive_a_restart(upstream, tmp_path):
    # The provider: another thrifty (its /v1/files + /v1/batches are OpenAI's batch API) whose
    # batch does not finish until the test lets it, so the front gateway restarts meanwhile.
    provider_spend = Ledger()
    provider, gate = gated_provider(tmp_path, upstream, provider_spend)
    # The tenant: a team with a budget and a key, in the front gateway's spend database.
    key, budget = team_t(tmp_path)
    lines_db = tmp_path / "spend.db"  # the front gateway's batches are beside its ledger

    with running(provider) as provider_url:
        # -- first gateway process: the batch is accepted and its lines go to the provider.
        first = Front(tmp_path, provider_url, upstream)
        with running(first.app) as url:
            client, batch = submit(url, key, jsonl(N, "m-batch"))

            def submitted() -> bool:
                with sqlite3.connect(lines_db) as db:
                    return (
                        db.execute(
                            "SELECT count(*) FROM batch_lines WHERE upstream IS NOT NULL AND hold IS NOT NULL"
                        ).fetchone()[0]
                        == N
                    )

            _wait(submitted, "the lines to reach the provider's batch API")
            held_before = first.held()
            assert held_before > 0  # one hold per line, taken at submission
        # The process is gone (its in-memory holds with it); the provider is still working.

        # -- second gateway process on the same database, journal and batch store.
        second = Front(tmp_path, provider_url, upstream)
        with running(second.app) as url:
            # Before it served anything, the lines hold exactly what they held before.
            assert second.held() == held_before
            client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            assert client.batches.retrieve(batch.id).status == "in_progress"
            # The holds count: with the budget lowered to what is held plus half of what an
            # interactive request could cost, that request is refused, and says why.
            body = {
                "model": "m-ok",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 50,
            }
            principal = Principal(key_id=None, team_id="t")
            request_max = second.app.gw.plan_chat(principal, ChatRequest(dict(body))).max_cost_usd
            limit = held_before / 1e9 + request_max / 2
            admin_ops.set_budget(
                second.spend.db, "team", "t", amount_usd=f"{limit:.9f}", period="monthly"
            )
            second.spend.reload()
            r = httpx.post(
                url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
            )
            assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
            assert "held by requests in flight" in r.json()["error"]["message"]
            admin_ops.set_budget(second.spend.db, "team", "t", amount_usd="10", period="monthly")
            second.spend.reload()

            gate.set()  # the provider finishes its batch
            _wait(
                lambda: client.batches.retrieve(batch.id).status == "completed",
                "the batch to complete after the restart",
            )
            done = client.batches.retrieve(batch.id)
            assert done.request_counts.completed == N and done.request_counts.failed == 0
            out = [
                json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()
            ]
            assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(N)]
            # Every hold is released, and the budget counts exactly what the lines cost.
            assert second.held() == 0
            second.spend.flush()
            rows = second.spend.db.all(
                "SELECT request_id, cost_nanos, batch, served_model, team_id, prompt_tokens,"
                " completion_tokens FROM ledger WHERE batch = 1 ORDER BY request_id"
            )
            assert [r[0] for r in rows] == [f"{batch.id}_{i}" for i in range(N)]  # billed once
            for _, cost, is_batch, served, team, prompt, completion in rows:
                assert is_batch == 1 and served == "m-batch" and team == "t"
                assert cost == usd_to_nanos(prompt * 0.5e-6 + completion * 1e-6) > 0  # batch prices
            spent = second.spend.db.one(
                "SELECT sum(spent_nanos) FROM budget_spend WHERE budget_id = ?", (budget["id"],)
            )[0]
            assert spent == sum(r[1] for r in rows)
    # The provider ran each line once.
    assert sorted(r.request_id.rsplit("_", 1)[1] for r in provider_spend.records) == [
        str(i) for i in range(N)
    ]


def test_provider_lines_of_a_cancelled_batch_are_still_billed(upstream, tmp_path):
    """Cancelling does not drop the lines a provider is already working on: they are billed
    when its results come, their holds released, then the batch is closed as cancelled."""
    provider, gate = gated_provider(tmp_path, upstream, Ledger())
    key, budget = team_t(tmp_path)
    with running(provider) as provider_url:
        front = Front(tmp_path, provider_url, upstream)
        with running(front.app) as url:
            client, batch = submit(url, key, jsonl(N, "m-batch"))
            _wait(lambda: front.held() > 0, "the lines' holds")
            client.batches.cancel(batch.id)
            time.sleep(0.3)  # several runner passes while the provider works
            assert client.batches.retrieve(batch.id).status == "cancelling"
            gate.set()
            _wait(
                lambda: client.batches.retrieve(batch.id).status == "cancelled",
                "the cancelled batch to close",
            )
            assert front.held() == 0
            front.spend.flush()
            rows = front.spend.db.all("SELECT cost_nanos FROM ledger WHERE batch = 1")
            assert len(rows) == N and all(r[0] > 0 for r in rows)
            spent = front.spend.db.one(
                "SELECT sum(spent_nanos) FROM budget_spend WHERE budget_id = ?", (budget["id"],)
            )[0]
            assert spent == sum(r[0] for r in rows)


def test_answered_line_is_billed_once_when_the_gateway_dies_before_billing_it(upstream, tmp_path):
    """A line that runs through the gateway is marked done with its answer before it is billed;
    if the process dies in between, the next start bills it from what was stored (with its hold
    taken again and released) instead of calling the provider a second time, and lines the
    ledger already has are not billed again."""
    from thrifty.gateway.batch_exec import GatewayExecutor
    from thrifty.multipliers.batches import line_request_id

    n = 4
    calls: dict[str, int] = {}
    _, budget = team_t(tmp_path)
    config = front_config(tmp_path, "http://127.0.0.1:9", upstream, retry=RETRY)

    async def process(crash_line: int | None) -> tuple[int, int]:
        async with gateway_process(
            tmp_path, config, owner="team:t", principal={"team_id": "t"}, content=jsonl(n, "m-ok")
        ) as (app, spend, batches):
            crashed = asyncio.Event()

            class DiesBeforeBilling(GatewayExecutor):
                async def __call__(self, fields, endpoint, body, request_id, *, store_answer=None):
                    calls[request_id] = calls.get(request_id, 0) + 1
                    line = int(request_id.rsplit("_", 1)[1])

                    async def store_then_die(code, response, settle):
                        await store_answer(code, response, settle)
                        if line == crash_line:
                            crashed.set()
                            # killed: answered and marked done, not billed
                            await asyncio.sleep(3600)

                    return await super().__call__(
                        fields, endpoint, body, request_id, store_answer=store_then_die
                    )

            executor = DiesBeforeBilling(app.pipeline)
            await run_lines(batches, executor, crashed if crash_line is not None else None)
            held = sum(spend.budgets._held.values())
            spend.flush()
            billed = len(spend.db.all("SELECT 1 FROM ledger"))
            return held, billed

    held, billed = asyncio.run(process(crash_line=1))
    assert billed == 1 and held > 0  # line 0 billed; line 1 answered, its hold still taken
    held, billed = asyncio.run(process(crash_line=None))
    assert held == 0 and billed == n

    db = sqlite3.connect(tmp_path / "spend.db")
    ((batch_id, status, output),) = db.execute(
        "SELECT id, status, output_file_id FROM batches"
    ).fetchall()
    assert status == "completed"
    assert calls == {line_request_id(batch_id, i): 1 for i in range(n)}  # none ran twice
    (content,) = db.execute("SELECT content FROM batch_files WHERE id = ?", (output,)).fetchone()
    out = [json.loads(x) for x in bytes(content).splitlines()]
    assert [x["response"]["status_code"] for x in out] == [200] * n
    assert (
        db.execute("SELECT count(*) FROM batch_lines WHERE settle IS NOT NULL").fetchone()[0] == 0
    )
    ledger = sqlite3.connect(tmp_path / "spend.db")
    rows = ledger.execute("SELECT request_id, cost_nanos, batch, team_id FROM ledger").fetchall()
    assert sorted(r[0] for r in rows) == [line_request_id(batch_id, i) for i in range(n)]
    assert all(r[1] > 0 and r[2] == 1 and r[3] == "t" for r in rows)
    ((spent,),) = ledger.execute(
        "SELECT sum(spent_nanos) FROM budget_spend WHERE budget_id = ?", (budget["id"],)
    ).fetchall()
    assert spent == sum(r[1] for r in rows)  # the line billed after the restart counts too
