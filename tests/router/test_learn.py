"""``thrifty router learn``: the labels missing for rated routed requests, added once."""

from __future__ import annotations

import sqlite3

from thrifty.cli import main
from thrifty.spend.db import Database


def _copy(rated, tmp_path) -> str:
    rated.spend.flush()
    src = sqlite3.connect(rated.db_url.removeprefix("sqlite:///"))
    path = tmp_path / "copy.db"
    dst = sqlite3.connect(path)
    src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{path}"


def _labels(url: str) -> dict[str, tuple[float, str]]:
    db = Database(url)
    try:
        return {r[0]: (r[1], r[2]) for r in db.all(
            "SELECT request_id, score, model FROM router_labels WHERE source = 'feedback'")}
    finally:
        db.close()


def test_learn_adds_exactly_the_missing_labels_and_is_idempotent(rated, tmp_path, capsys):
    url = _copy(rated, tmp_path)
    full = _labels(url)
    assert set(full) == set(rated.feedback)
    rids = sorted(rated.feedback)
    lost, changed, unroutable = rids[:7], rids[7], rids[8]
    db = Database(url)
    for rid in [*lost, unroutable]:  # rated while learning was off, or before it existed
        db.execute("DELETE FROM router_labels WHERE request_id = ? AND source = 'feedback'", (rid,))
    db.execute("UPDATE ledger SET route_context = NULL WHERE request_id = ?", (unroutable,))  # not routed by auto
    db.execute("UPDATE feedback SET score = 1 - score WHERE request_id = ?", (changed,))  # re-rated, label stale
    judge_before = db.all("SELECT * FROM router_labels WHERE source = 'judge' ORDER BY request_id")
    db.close()

    assert main(["router", "learn", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "added 7 label(s), updated 1 from feedback"
    after = _labels(url)
    assert set(after) == set(full) - {unroutable}
    assert after[changed][0] == 1 - full[changed][0]
    assert all(after[r] == full[r] for r in after if r != changed)  # same score and model as when rated live
    db = Database(url)
    assert db.all("SELECT * FROM router_labels WHERE source = 'judge' ORDER BY request_id") == judge_before
    db.close()

    assert main(["router", "learn", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "added 0 label(s), updated 0 from feedback"
    assert _labels(url) == after
