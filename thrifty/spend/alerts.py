"""Soft budget thresholds: log and call the budget's webhook once per threshold and period."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable

from thrifty.spend.db import Database
from thrifty.spend.money import format_usd, nanos_to_usd
from thrifty.spend.periods import iso
from thrifty.spend.snapshot import Snapshot

log = logging.getLogger("thrifty.spend.alerts")


def post_webhook(url: str, payload: dict) -> None:
    """POST JSON in a background thread; a slow or failing receiver never blocks the ledger."""

    def send() -> None:
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except Exception as exc:  # noqa: BLE001 (a failing webhook must never stop traffic)
            log.warning("budget webhook %s failed: %s", url, exc)

    threading.Thread(target=send, name="thrifty-budget-webhook", daemon=True).start()


def check_thresholds(
    db: Database, snapshot: Callable[[], Snapshot], added: dict[tuple[str, int], int],
    send: Callable[[str, dict], None] = post_webhook,
) -> list[dict]:
    """Fire the alerts newly crossed by the spend just added; returns them."""
    fired: list[dict] = []
    budgets = snapshot().budgets_by_id
    for (budget_id, period_start) in added:
        budget = budgets.get(budget_id)
        if budget is None or not budget.soft_thresholds:
            continue
        row = db.one("SELECT spent_nanos FROM budget_spend WHERE budget_id = ? AND period_start = ?",
                     (budget_id, period_start))
        spent = int(row[0]) if row else 0
        for threshold in budget.soft_thresholds:
            if spent < threshold * budget.limit_nanos:
                continue
            with db.transaction():
                new = db.execute(
                    "INSERT INTO budget_alerts (budget_id, period_start, threshold, sent_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (budget_id, period_start, threshold, time.time()),
                ).rowcount == 1
            if not new:
                continue
            payload = {
                "type": "budget.threshold", "budget_id": budget_id, "scope": budget.scope,
                "scope_id": budget.scope_id, "period": budget.period, "period_start": iso(period_start),
                "threshold": threshold, "limit_usd": f"{nanos_to_usd(budget.limit_nanos):f}",
                "spent_usd": f"{nanos_to_usd(spent):f}",
            }
            log.warning("%s reached %d%% of its limit: %s of %s", budget.label(), round(threshold * 100),
                        format_usd(spent), format_usd(budget.limit_nanos))
            if budget.webhook_url:
                send(budget.webhook_url, payload)
            fired.append(payload)
    return fired
