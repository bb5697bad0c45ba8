"""Lines sent to a provider's batch API are submitted exactly once, whatever the gateway dies
of, and their budget holds count until the provider's batch ends.

The provider is the fake upstream's OpenAI batch API (``FakeUpstream.faults``); the gateway is
``thrifty serve`` in its own process, killed with SIGKILL:

* after the provider accepted the batch but before the gateway learnt (and stored) its id: the
  restart finds the provider's batch by the submission tag in its metadata and adopts it;
* after the input file was uploaded but before the provider made a batch of it: the restart
  finds no batch, deletes the orphan file, and submits the lines once;
* while the provider cannot list its batches: nothing is sent again until it can.

In process (SQLite and PostgreSQL): the holds of lines waiting on a provider batch still count
after the spend control's ``hold_ttl`` has passed, before and after a restart, and are released
(nothing billed that the provider did not run) when the provider's batch expires.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import openai
import pytest
from batch_setup import completed, jsonl, submit
from provider_batch_setup import (
    Front,
    N,
    batch_lines,
    check_once,
    held_usd,
    ledger_rows,
    serve_config,
    tagged,
    team,
    wait_for,
)

from thrifty.multipliers.batches import line_request_id
from thrifty.spend.contract import Principal
from thrifty.spend.control import DbSpendControl
from thrifty.spend.db import Database
from thrifty.spend.money import format_usd, usd_to_nanos
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.loadtest import Gateway
from thrifty.testing.server import running


def _crash_and_restart(tmp: Path, fake: FakeUpstream, fault: str, *, fail_list: int = 0) -> dict:
    """Submit a batch of N provider lines to a gateway process, kill it (SIGKILL) when the
    provider's create call reaches ``fault`` ("before"/"after" making the batch), start a second
    process on the same database, journal and batch store (the provider failing its first
    ``fail_list`` list calls), and let the batch complete; what the test checks."""
    db_url = f"sqlite:///{tmp / 'front' / 'spend.db'}"
    (tmp / "front").mkdir(exist_ok=True)
    key, budget = team(db_url)
    config = serve_config(tmp, fake, db_url)
    fake.faults.hang_create = fault
    first = Gateway(config, tmp / "gw1.log")
    try:
        client, batch = submit(first.url, key, jsonl(N, "m-batch"))
        assert fake.faults.accepted.wait(20), "the provider never got the batch create call"
        first.kill()  # mid-call: the gateway never learns what the provider did
    finally:
        first.stop()
    before = batch_lines(db_url)
    made = len(fake.state.batches)
    fake.faults.hang_create = None
    fake.faults.fail_list = fail_list
    with Gateway(config, tmp / "gw2.log") as second:
        client = openai.OpenAI(base_url=second.url + "/v1", api_key=key, max_retries=0)
        done = completed(client, client.batches.retrieve(batch.id), timeout=30)
        out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        # The ledger reaches the database in the background (journal first): wait for it.
        wait_for(lambda: len(ledger_rows(db_url, budget["id"])[0]) >= N, "the ledger records")
        rows, spent = ledger_rows(db_url, budget["id"])
        held = held_usd(second.url, key, db_url, spent)
    return {
        "batch": batch.id,
        "before": before,
        "made_before_restart": made,
        "done": done,
        "out": out,
        "rows": rows,
        "spent": spent,
        "held": held,
        "log": (tmp / "gw2.log").read_text(),
    }


def test_crash_after_the_provider_accepted_the_batch_adopts_it(tmp_path):
    with FakeUpstream() as fake:
        r = _crash_and_restart(tmp_path, fake, "after")
        # The provider made the batch; the dead gateway had not stored its id, only the intent.
        assert r["made_before_restart"] == 1
        assert all(upstream is None and sub for _, sub, upstream in r["before"]), r["before"]
        check_once(r, fake)
        assert "adopted, not sent again" in r["log"]
        assert fake.state.deleted_files == []  # the file is the adopted batch's input


def test_crash_before_the_provider_made_the_batch_sends_the_lines_once(tmp_path):
    with FakeUpstream() as fake:
        r = _crash_and_restart(tmp_path, fake, "before")
        assert r["made_before_restart"] == 0
        check_once(r, fake)
        # The file uploaded before the crash (no batch was made of it) was deleted.
        assert len(fake.state.deleted_files) == 1
        orphan = fake.state.deleted_files[0]
        assert all(f["id"] != orphan for f in fake.state.files.values())
        assert "has no batch for submission" in r["log"]


def test_lines_wait_while_the_provider_cannot_list_its_batches(tmp_path):
    with FakeUpstream() as fake:
        r = _crash_and_restart(tmp_path, fake, "after", fail_list=5)  # waits 0.05 .. 0.8 s
        assert fake.faults.fail_list == 0  # every failing list call was made, then one succeeded
        check_once(r, fake)  # and nothing was sent again meanwhile
        assert r["log"].count("cannot ask provider bp whether it has submission") == 5


def test_many_provider_batches_are_paged_through(tmp_path):
    """The provider lists 100 batches a page, newest first: a submission behind 250 newer
    batches (made by others after it) is still found and adopted."""
    with FakeUpstream() as fake:
        real = fake.state.batches

        class Busier(dict):
            """The provider's batches, with 250 others made right after the hung create."""

            def __setitem__(self, k, v):
                super().__setitem__(k, v)
                if fake.faults.hang_create == "after":
                    for i in range(250):
                        super().__setitem__(f"batch_other{i}", {**v, "id": f"batch_other{i}",
                                                                 "metadata": None, "_lines": []})

        fake.state.batches = Busier(real)
        r = _crash_and_restart(tmp_path, fake, "after")
        assert len(tagged(fake, r["batch"])) == 1 and len(fake.state.batches) == 251
        assert sorted(fake.state.batch_runs) == [line_request_id(r["batch"], i) for i in range(N)]
        assert [row[0] for row in r["rows"]] == [line_request_id(r["batch"], i) for i in range(N)]
        assert r["held"] == format_usd(0)


# -- in process: holds that outlive hold_ttl --------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_holds_of_waiting_lines_outlive_hold_ttl(tmp_path, backend, request):
    db_url = (
        f"sqlite:///{tmp_path / 'spend.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    )
    key, budget = team(db_url)
    with FakeUpstream() as fake:
        fake.faults.hold = True  # the provider works on the batch until the test lets it end
        first = Front(tmp_path, fake, db_url)
        with running(first.app) as url:
            client, batch = submit(url, key, jsonl(N, "m-batch"))
            wait_for(lambda: all(u for _, _, u in batch_lines(db_url)), "the provider batch id")
            held = first.held()
            assert held > 0
            time.sleep(1.5)  # past hold_ttl (1 s)
            assert first.held() == held  # the lines' holds still count ...
            r = first.refused(url, key, held)  # ... against the budget
            assert r.status_code == 429 and "held by requests in flight" in r.text, r.text
        # A restart: the holds are taken again, and they too outlive hold_ttl.
        second = Front(tmp_path, fake, db_url)
        with running(second.app) as url:
            assert second.held() == held
            time.sleep(1.5)
            assert second.held() == held
            r = second.refused(url, key, held)
            assert r.status_code == 429 and "held by requests in flight" in r.text, r.text
            fake.faults.hold = False
            client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            completed(client, batch)
            second.spend.flush()
            wait_for(lambda: second.held() == 0, "the holds to be released")
            rows, spent = ledger_rows(db_url, budget["id"])
            assert [row[0] for row in rows] == [line_request_id(batch.id, i) for i in range(N)]
            assert all(row[1] > 0 for row in rows) and spent == sum(row[1] for row in rows)
    if backend == "postgresql":
        db = Database(db_url)
        assert db.one("SELECT count(*) FROM reservations")[0] == 0
        db.close()


def test_an_ordinary_hold_keeps_hold_ttl_on_postgresql(tmp_path, pg_url):
    """Only provider batch lines get the long TTL: ``admit`` without ``ttl`` is unchanged."""
    team(pg_url)

    async def go() -> list[float]:
        spend = DbSpendControl(pg_url, tmp_path / "journal", hold_ttl=7.0)
        try:
            from thrifty.catalog.model import ModelInfo

            info = ModelInfo(name="m", provider="bp", input_cost_per_token=1e-6, output_cost_per_token=2e-6)
            p = Principal(key_id=None, team_id="t")
            await spend.admit(p, info, prompt_tokens=1, max_cost_usd=0.01)
            await spend.admit(p, info, prompt_tokens=1, max_cost_usd=0.01, ttl=90000)
            db = Database(pg_url)
            rows = db.all("SELECT expires_at - ? FROM reservations ORDER BY expires_at", (time.time(),))
            db.close()
            return [float(r[0]) for r in rows]
        finally:
            await spend.close()

    short, long = asyncio.run(go())
    assert 5 < short <= 7 and 89990 < long <= 90000


def test_an_expired_provider_batch_bills_only_what_ran(tmp_path):
    """The provider's batch expires after running one line: that line is billed, the others fail
    (cost 0) and every hold is released."""
    db_url = f"sqlite:///{tmp_path / 'spend.db'}"
    key, budget = team(db_url)
    with FakeUpstream() as fake:
        fake.faults.end, fake.faults.complete_lines = "expired", 1
        front = Front(tmp_path, fake, db_url)
        with running(front.app) as url:
            client, batch = submit(url, key, jsonl(N, "m-batch"))
            done = completed(client, batch)
            assert done.request_counts.completed == 1 and done.request_counts.failed == N - 1
            errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
            assert {e["response"]["body"]["error"]["code"] for e in errors} == {"batch_incomplete"}
            assert front.held() == 0
            front.spend.flush()
            rows, spent = ledger_rows(db_url, budget["id"])
    assert len(fake.state.batch_runs) == 1
    billed = [row for row in rows if row[1] > 0]
    assert [row[0] for row in billed] == [fake.state.batch_runs[0]]
    assert len(rows) == N and all(row[3] == 500 for row in rows if row[1] == 0)
    assert spent == sum(row[1] for row in rows) == billed[0][1]
    assert billed[0][1] == usd_to_nanos(12 * 0.5e-6 + 9 * 1e-6)  # the fake's usage, batch prices
