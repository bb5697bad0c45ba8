"""A replica killed with requests in flight, through real processes on the test PostgreSQL.

Three ``thrifty serve`` replicas, A, B and C, share one spend database in front of the counting fake
upstream, with a short replica lease (0.5 s heartbeat, 2 s expiry). A takes N requests whose
upstream calls hang (the fake holds them unanswered), so N holds fill a tight team budget; then
A is killed with SIGKILL. Within the lease window the survivors (nobody restarts A or tells them
about it; B and C race for its holds) charge each of A's holds in full, once: one ``replica_died`` ledger record per hold, at the held
amount, moved from held to spent; no hold is left, the budget counts exactly the ledger, every
upstream call has a charged record, and B's refusals now say the money is spent, not held. A
restarted on its own data directory replays its journal and charges nothing twice.
"""

from __future__ import annotations

import json
import re
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx

from thrifty.spend import admin_ops
from thrifty.spend.db import Database
from thrifty.spend.money import format_usd
from thrifty.spend.reclaim import LOST_SUFFIX, LOST_TYPE
from thrifty.spend.schema import migrate
from thrifty.testing.fake_upstream import FakeUpstream, HitGate
from thrifty.testing.loadtest import Gateway, _toml_value

N = 8  # requests in flight on A when it dies
HEARTBEAT, EXPIRY = 0.5, 2.0
PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "context_window": 4000, "max_output_tokens": 200}
SMALL = {"model": "m-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
BIG = {**SMALL, "max_tokens": 100}  # holds 50 output tokens (100_000 nano-USD) more than SMALL


def send_in_background(url: str, auth: dict[str, str], n: int) -> list[threading.Thread]:
    """``n`` requests in flight on threads; a gateway killed under them is expected."""

    def send() -> None:
        try:
            httpx.post(url + "/v1/chat/completions", json=SMALL, headers=auth, timeout=60)
        except httpx.HTTPError:
            pass

    threads = [threading.Thread(target=send, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def replica_config(data: Path, fake: FakeUpstream, db_url: str) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    lines = [
        f"data_dir = {json.dumps(str(data))}",
        'frontier_model = "m-ok"',
        "",
        "[retry]",
        "attempts = 1",
        "",
        "[spend]",
        *([f"database_url = {json.dumps(db_url)}"] if db_url else []),  # none: SQLite in data_dir
        "poll_interval_s = 0.1",
        f"lease_heartbeat_s = {HEARTBEAT}",
        f"lease_expiry_s = {EXPIRY}",
        "",
        "[providers.up]",
        'type = "openai"',
        f"base_url = {json.dumps(fake.base_url)}",
        "",
        "[models.m-ok]",
        *(f"{k} = {_toml_value(v)}" for k, v in {"provider": "up", "upstream_model": "m-up", "route": False,
                                                  **PRICE}.items()),
        "",
    ]
    path = data / "gateway.toml"
    path.write_text("\n".join(lines))
    return path


def wait_for(cond, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one(db_url: str, sql: str, params: tuple = ()) -> tuple:
    db = Database(db_url)
    try:
        return db.one(sql, params) or ()
    finally:
        db.close()


def test_the_holds_of_a_killed_replica_are_charged_in_full_by_the_survivor_within_the_lease(tmp_path, pg_url):
    db = Database(pg_url)
    migrate(db)
    admin_ops.create_team(db, "t")
    _, key = admin_ops.create_key(db, team_id="t")
    budget = admin_ops.set_budget(db, "team", "t", amount_usd="10", period="monthly")
    db.close()
    auth = {"authorization": f"Bearer {key}"}
    with FakeUpstream() as fake:
        fake.state.behaviour = HitGate(fake.state, N, "hang", "ok")
        a = Gateway(replica_config(tmp_path / "a", fake, pg_url), tmp_path / "a.log")
        b: Gateway | None = None
        c: Gateway | None = None
        restarted: Gateway | None = None
        in_flight: list[threading.Thread] = []
        try:
            b = Gateway(replica_config(tmp_path / "b", fake, pg_url), tmp_path / "b.log")
            c = Gateway(replica_config(tmp_path / "c", fake, pg_url), tmp_path / "c.log")

            in_flight = send_in_background(a.url, auth, N)  # A dies under them
            wait_for(lambda: fake.hits == N and one(pg_url, "SELECT COUNT(*) FROM reservations") == (N,),
                     "A's requests in flight, held")
            held = one(pg_url, "SELECT MIN(amount_nanos), MAX(amount_nanos) FROM reservations")
            assert held[0] == held[1]
            hold = int(held[0])
            # A tight budget: A's holds, and room for one more SMALL hold (not a BIG one).
            limit = N * hold + hold + 50_000
            db = Database(pg_url)
            admin_ops.set_budget(db, "team", "t", amount_usd=str(Decimal(limit) / 10**9), period="monthly")
            db.close()

            def on_b(body: dict) -> httpx.Response:
                return httpx.post(b.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)

            assert on_b(SMALL).status_code == 200
            wait_for(lambda: one(pg_url, "SELECT COUNT(*) FROM reservations") == (N,), "B's request settled")
            refused = on_b(BIG)
            assert refused.status_code == 429
            assert f"{format_usd(N * hold)} is held" in refused.json()["error"]["message"]

            a.kill()  # SIGKILL, N requests in flight
            killed = time.monotonic()
            assert a.proc.returncode == -9
            wait_for(lambda: one(pg_url, "SELECT COUNT(*) FROM reservations") == (0,), "A's holds charged",
                     timeout=EXPIRY + HEARTBEAT + 10)
            charged_after = time.monotonic() - killed
            served = on_b(SMALL)
            served_after = time.monotonic() - killed
            print(f"\nA's {N} holds charged {charged_after:.2f} s after SIGKILL; B's next request served "
                  f"{served_after:.2f} s after it (lease {HEARTBEAT} s heartbeat / {EXPIRY} s expiry)")
            assert served.status_code == 200
            wait_for(lambda: one(pg_url, "SELECT COUNT(*) FROM reservations") == (0,), "B's request settled")
            refused = on_b(BIG)  # A's holds are spend now: the budget still has no room for it
            assert refused.status_code == 429
            assert f"{format_usd(0)} is held" in refused.json()["error"]["message"]
            assert charged_after <= EXPIRY + HEARTBEAT + 1.5  # within the lease window (and a poll)

            # A restarted on its data directory replays its journal: nothing is charged twice.
            restarted = Gateway(replica_config(tmp_path / "a", fake, pg_url), tmp_path / "a2.log")
            assert on_b(SMALL).status_code == 429  # the room is gone: the budget is exact
        finally:
            for g in (restarted, c, b, a):
                if g is not None:
                    g.stop()
            for t in in_flight:
                t.join(5)

    db = Database(pg_url)
    try:
        rows = db.all("SELECT request_id, cost_nanos, status, error_type, team_id, requested_model FROM ledger")
        spent = db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ?", (budget["id"],))[0]
        assert db.one("SELECT COUNT(*) FROM reservations")[0] == 0  # no hold is left
    finally:
        db.close()
    lost = [r for r in rows if r[3] == LOST_TYPE]
    served_rows = [r for r in rows if r[2] == 200]
    assert len(lost) == N  # one record per hold A died with
    assert all(r[0].endswith(LOST_SUFFIX) and r[1] == hold and r[2] == 502 and r[4] == "t" and r[5] == "m-ok"
               for r in lost)
    assert len({r[0] for r in lost}) == N
    # Every upstream call (A's unanswered N, B's answered ones) has a charged record, and what the
    # budget counts is exactly the ledger: at least what the upstream served.
    assert fake.hits == N + len(served_rows) == len([r for r in rows if r[1] > 0])
    answered = sum(12 * 1_000 + 9 * 2_000 for _ in served_rows)  # the fake's usage, priced
    assert spent == sum(r[1] for r in rows) >= answered + N * hold
    logs = [(tmp_path / f"{x}.log").read_text() for x in "bc"]
    assert all("Traceback" not in x for x in logs)
    # Who charged what (B, C or both), as each logged it: N in all.
    assert sum(int(n) for x in logs for n in re.findall(r"died with (\d+) request", x)) == N


def test_a_killed_sqlite_gateway_is_charged_its_requests_in_flight_when_it_starts_again(tmp_path):
    """SQLite runs one gateway process (a second is refused), whose holds live in memory: they are
    journaled, and the next start on the data directory charges those that never settled."""
    from thrifty.spend.db import sqlite_url

    data = tmp_path / "g"
    data.mkdir()
    db = Database(sqlite_url(data / "spend.db"))
    migrate(db)
    admin_ops.create_team(db, "t")
    _, key = admin_ops.create_key(db, team_id="t")
    budget = admin_ops.set_budget(db, "team", "t", amount_usd="10", period="monthly")
    db.close()
    auth = {"authorization": f"Bearer {key}"}
    with FakeUpstream() as fake:
        fake.state.behaviour = HitGate(fake.state, 0, "hang", "ok")
        config = replica_config(data, fake, "")  # no database_url: SQLite in the data directory
        g = Gateway(config, tmp_path / "g.log")
        again: Gateway | None = None
        in_flight: list[threading.Thread] = []
        try:
            assert httpx.post(g.url + "/v1/chat/completions", json=SMALL, headers=auth, timeout=30).status_code == 200

            fake.state.behaviour.until = N + 1  # the first call was answered: hang the next N
            in_flight = send_in_background(g.url, auth, N)  # the gateway dies under them
            wait_for(lambda: fake.hits == N + 1, "the requests in flight")
            g.kill()
            assert g.proc.returncode == -9
            again = Gateway(config, tmp_path / "g2.log")
            assert httpx.post(again.url + "/v1/chat/completions", json=SMALL, headers=auth,
                              timeout=30).status_code == 200
        finally:
            for x in (again, g):
                if x is not None:
                    x.stop()
            for t in in_flight:
                t.join(5)
    db = Database(sqlite_url(data / "spend.db"))
    try:
        rows = db.all("SELECT request_id, cost_nanos, status, error_type, team_id, requested_model FROM ledger")
        spent = db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ?", (budget["id"],))[0]
    finally:
        db.close()
    lost = [r for r in rows if r[3] == LOST_TYPE]
    served_rows = [r for r in rows if r[2] == 200]
    assert len(lost) == N and len({r[0] for r in lost}) == N
    hold = lost[0][1]
    answered = 12 * 1_000 + 9 * 2_000  # the fake's usage, priced
    assert all(r[0].endswith(LOST_SUFFIX) and r[1] == hold > answered and r[2] == 502 and r[4] == "t"
               and r[5] == "m-ok" for r in lost)
    assert len(served_rows) == 2 and all(r[1] == answered for r in served_rows)
    assert fake.hits == N + 2 == len([r for r in rows if r[1] > 0])
    assert spent == sum(r[1] for r in rows) == 2 * answered + N * hold
    assert not list((data / "journal").glob("*.journal"))[1:]  # the dead one's journal is replayed and gone
