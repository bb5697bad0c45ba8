"""A provider that refuses a batch for good fails its lines once; one that fails transiently is
asked again, less and less often.

The provider is the fake upstream's OpenAI batch API, whose ``faults.fail_upload`` /
``faults.fail_create`` make its next ``POST /files`` / ``POST /batches`` calls fail with a given
HTTP status (0: the connection is dropped); the gateway runs in this process on SQLite, its batch
runner polling every 0.05 s.
"""

from __future__ import annotations

import itertools
import json
import logging
import time

import pytest
from batch_setup import completed, jsonl, submit
from provider_batch_setup import Front, N, ledger_rows, team, wait_for

from thrifty.multipliers.batches import line_request_id
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running

POLL = 0.05  # the runner's poll (batch_setup / Front: BatchSettings(poll=0.05))
REFUSALS = [("create", s) for s in (400, 401, 403, 404, 422)] + [("upload", s) for s in (400, 403)]


@pytest.mark.parametrize(("call", "status"), REFUSALS)
def test_a_permanent_refusal_fails_the_lines_once(tmp_path, call, status, caplog):
    """The lines fail with the provider's status and message in the batch's error file (OpenAI
    batch format), cost 0, holds released, and are never sent again (the provider keeps
    refusing: a retry would show as a second call)."""
    caplog.set_level(logging.INFO, "thrifty.batches")
    db_url = f"sqlite:///{tmp_path / 'spend.db'}"
    key, budget = team(db_url)
    with FakeUpstream() as fake:
        fake.faults.refusal = "Invalid key in the batch: not allowed here"
        refusals = fake.faults.fail_create if call == "create" else fake.faults.fail_upload
        refusals.extend([status] * 50)
        front = Front(tmp_path, fake, db_url)
        with running(front.app) as url:
            client, batch = submit(url, key, jsonl(N, "m-batch"))
            done = completed(client, batch)
            assert done.request_counts.completed == 0 and done.request_counts.failed == N
            assert done.output_file_id is None
            errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
            assert sorted(e["custom_id"] for e in errors) == [f"req-{i}" for i in range(N)]
            for e in errors:
                assert e["response"]["status_code"] == status
                err = e["response"]["body"]["error"]
                assert err["type"] == "upstream_error" and err["code"] == "provider_batch_refused"
                assert f"(HTTP {status})" in err["message"]
                assert fake.faults.refusal in err["message"]
            time.sleep(20 * POLL)  # twenty passes: nothing is sent again
            assert len(refusals) == 49  # one call refused, no retry
            assert front.held() == 0
            front.spend.flush()
            rows, spent = ledger_rows(db_url, budget["id"])
    assert fake.state.batches == {} and fake.state.batch_runs == []
    assert fake.state.files == {}  # an uploaded file the provider made no batch of is deleted
    assert [r[0] for r in rows] == [line_request_id(batch.id, i) for i in range(N)]
    assert all(r[1] == 0 and r[2] == 1 and r[3] == status for r in rows)
    assert spent == 0
    refused = [r for r in caplog.records if "refused submission" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert fake.faults.refusal not in caplog.text  # the provider's message is not logged


def test_transient_failures_are_retried_with_backoff(tmp_path, caplog):
    """5xx, 408, 429 and a dropped connection on creating the batch: the lines are sent again
    (after asking the provider whether it has them) with doubling waits, and the batch then
    runs once; each line billed once, the budget counts the ledger, nothing held."""
    caplog.set_level(logging.INFO, "thrifty.batches")
    db_url = f"sqlite:///{tmp_path / 'spend.db'}"
    key, budget = team(db_url)
    failures = [503, 0, 429, 408, 500]
    with FakeUpstream() as fake:
        fake.faults.fail_create.extend(failures)
        front = Front(tmp_path, fake, db_url)
        with running(front.app) as url:
            client, batch = submit(url, key, jsonl(N, "m-batch"))
            done = completed(client, batch)
            assert done.request_counts.completed == N and done.request_counts.failed == 0
            front.spend.flush()
            wait_for(lambda: front.held() == 0, "the holds to be released")
            rows, spent = ledger_rows(db_url, budget["id"])
    calls = fake.faults.create_calls
    assert len(calls) == len(failures) + 1
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    for i, gap in enumerate(gaps):  # waits of poll, 2 poll, 4 poll, ... (not every pass)
        assert gap >= 0.9 * POLL * 2**i, gaps
    assert gaps[-1] >= 0.9 * POLL * 2 ** (len(gaps) - 1)
    assert len(fake.state.batches) == 1
    rids = [line_request_id(batch.id, i) for i in range(N)]
    assert sorted(fake.state.batch_runs) == rids  # the provider ran each line once
    assert [r[0] for r in rows] == rids and all(r[1] > 0 and r[3] == 200 for r in rows)
    assert spent == sum(r[1] for r in rows)
    retried = [r for r in caplog.records if "failed (" in r.getMessage()]
    assert len(retried) == len(failures)
    assert "refused submission" not in caplog.text
