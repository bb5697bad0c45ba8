"""One money rule everywhere, budgets that will not run out say so, budget webhooks checked when
set and delivered with retries, and the CLI's help and flag vocabulary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from thrifty.reports.format import money, per_day, usd
from thrifty.spend.admin_ops import AdminError, check_webhook_url
from thrifty.spend.alerts import deliver


def test_one_money_rule():
    assert usd(12.5) == "$12.50" and usd(0) == "$0.00" and usd(0.00824) == "$0.00824"
    assert usd(0.000000412) == "$0.000000412"
    column = money([0.02, 0.00824, 1234.5, 0.0])
    assert column == ["$0.02000", "$0.00824", "$1,234.50000", "$0.00000"]
    assert len({c.split(".")[1].__len__() for c in column}) == 1  # one precision per column
    assert per_day(412_000) == "$0.000412/day"  # never "$0.00/day" for a rate that is not zero


def test_report_budget_that_lasts_the_period_shows_no_far_date(tmp_path):
    from thrifty.reports.render import runs_out_text

    lasting = {"status": "lasts the period", "runs_out": None, "runs_out_at": 5e9}
    assert runs_out_text(lasting) == "not this period"
    assert runs_out_text({"status": "not within a year", "runs_out": None}) == "not within a year"


@pytest.mark.parametrize("url", ["https://...", "ftp://hooks.example.com/x", "https://", "not a url",
                                 "https://hooks example.com/", "http://host:99999/"])
def test_bad_webhook_urls_are_refused_when_set(url):
    with pytest.raises(AdminError):
        check_webhook_url(url)


def test_webhook_cli_refuses_a_bad_url_at_set_time(tmp_path):
    env = {**os.environ, "THRIFTY_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "thrifty.cli", "budgets", "set", "--team", "t", "--amount", "5",
                          "--soft", "0.5", "--webhook", "https://..."], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 2 and "webhook_url" in run.stderr, run.stderr


def test_webhook_delivery_to_a_local_receiver_is_retried():
    got: list[dict] = []
    answers = [503, 500, 200]

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(answers[len(got) - 1])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        assert deliver(url, {"type": "budget.threshold", "threshold": 0.8}, delays=(0.01, 0.01, 0.01))
        assert len(got) == 3 and got[-1]["threshold"] == 0.8
        answers[:] = [400]
        got.clear()
        assert not deliver(url, {"x": 1}, delays=(0.01,))  # a 4xx is final: no retry
        assert len(got) == 1
    finally:
        server.shutdown()


def _help(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "thrifty.cli", *args, "--help"], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, "COLUMNS": "120"})
    return run.stdout


def test_help_texts():
    assert "``" not in _help()
    assert "95%%" not in _help("simulate") and "95%" in _help("simulate")
    rules = _help("policies", "set")
    for rule in ("allow_models", "deny_origin_countries", "max_usd_per_mtok", "routing_profile"):
        assert rule in rules
    for group in (("keys", "list"), ("spend",), ("report",), ("requests", "list")):
        text = _help(*group)
        assert "--database-url" in text and "--data-dir" in text and "--format" in text, group
    assert "--by" in _help("spend") and "--by" in _help("report")
