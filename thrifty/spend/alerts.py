"""Soft budget thresholds: log and call the budget's webhook once per threshold and period
(retried with backoff while the receiver is down or answers 429/5xx)."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from thrifty.spend.db import Database
from thrifty.spend.money import format_usd, nanos_to_usd
from thrifty.spend.periods import iso
from thrifty.spend.snapshot import Snapshot

log = logging.getLogger("thrifty.spend.alerts")


RETRY_DELAYS = (0.5, 2.0, 8.0)  # seconds before the 2nd, 3rd and 4th try


def deliver(url: str, payload: dict, delays: tuple[float, ...] = RETRY_DELAYS, timeout: float = 5.0) -> bool:
    """POST ``payload`` as JSON; a connection error, a timeout, a 429 or a 5xx is retried after
    each of ``delays``. Returns whether the receiver took it (2xx); a 4xx other than 429 is final."""
    body = json.dumps(payload).encode()
    for attempt in range(len(delays) + 1):
        if attempt:
            time.sleep(delays[attempt - 1])
        request = urllib.request.Request(
            url, data=body, headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return True
        except urllib.error.HTTPError as exc:
            if exc.code != 429 and exc.code < 500:
                log.warning("budget webhook %s refused the alert: HTTP %d", url, exc.code)
                return False
            log.warning("budget webhook %s failed (try %d): HTTP %d", url, attempt + 1, exc.code)
        except Exception as exc:  # noqa: BLE001 (a failing webhook must never stop traffic)
            log.warning("budget webhook %s failed (try %d): %s", url, attempt + 1, exc)
    return False


def post_webhook(url: str, payload: dict) -> None:
    """:func:`deliver` in a background thread: a slow or failing receiver never blocks the ledger."""
    threading.Thread(target=deliver, args=(url, payload), name="thrifty-budget-webhook", daemon=True).start()


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
