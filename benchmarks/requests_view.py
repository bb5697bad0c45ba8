"""The per-request view on a 1M-row SQLite ledger: one page per filter, cold and warm.

python -m benchmarks.requests_view [rows]  (default 1,000,000; builds the ledger in a temp dir)
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from thrifty.spend.db import Database
from thrifty.spend.requests import RequestQuery, list_requests
from thrifty.spend.schema import migrate


def main(n: int = 1_000_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'spend.db'}")
        migrate(db)
        rnd = random.Random(1)
        t0 = time.perf_counter()
        batch = []
        for i in range(n):
            status = 429 if rnd.random() < 0.05 else 200
            batch.append((f"req-{i:08d}", 1.79e9 + i * 2.5, f"key-{rnd.randrange(2000)}", f"team-{rnd.randrange(50)}",
                          f"model-{rnd.randrange(12)}" if status == 200 else None, status, rnd.randrange(10**6)))
            if len(batch) == 50_000:
                db.executemany("INSERT INTO ledger (request_id, ts, key_id, team_id, served_model, status,"
                               " cost_nanos) VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
                batch = []
        print(f"built {n:,} rows in {time.perf_counter() - t0:.1f} s")
        queries = {
            "newest page": RequestQuery(),
            "team": RequestQuery(team="team-7"),
            "key": RequestQuery(key="key-42"),
            "model": RequestQuery(model="model-3"),
            "status 429": RequestQuery(status=429),
            "team + time range": RequestQuery(team="team-7", since=1.79e9 + n, until=1.79e9 + 2 * n),
        }
        for name, q in queries.items():
            times = []
            page = list_requests(db, q)
            for _ in range(20):
                t = time.perf_counter()
                page = list_requests(db, q)
                times.append(time.perf_counter() - t)
            cursor = page["next_cursor"]
            t = time.perf_counter()
            for _ in range(50):  # 50 pages deep by cursor
                page = list_requests(db, RequestQuery(team=q.team, key=q.key, model=q.model, status=q.status,
                                                      since=q.since, until=q.until, cursor=cursor))
                cursor = page["next_cursor"] or cursor
            print(f"{name:20s} page of 50: median {sorted(times)[10] * 1000:.2f} ms; "
                  f"next 50 pages: {(time.perf_counter() - t) * 1000 / 50:.2f} ms each")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
