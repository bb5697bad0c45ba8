"""Budget gauges for ``/metrics``: each budget's limit, spend and what remains in its current
period, read from the spend database at scrape time (one source for every worker, so they are
not summed across workers the way counters are).

Labels: the budget's id, its scope (key, user, team), its period, and the team when the scope
is a team; never a key or user id (a budget's id already tells them apart).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from thrifty.pipeline.metrics import Gauge

log = logging.getLogger("thrifty.gateway")

LABELS = ("budget", "scope", "team", "period")


async def budget_gauges(spend: Any) -> list[Gauge]:
    """The three budget families (empty without spend control or budgets; a failed read is
    logged and the scrape goes on without them)."""
    usage = getattr(spend, "budget_usage", None)
    if usage is None:
        return []
    try:
        rows = await asyncio.to_thread(usage)
    except Exception as exc:  # noqa: BLE001 (the scrape must answer: counters matter more)
        log.warning("reading budget spend for /metrics failed: %s", exc)
        return []
    limit: dict[tuple[str, ...], float] = {}
    spent: dict[tuple[str, ...], float] = {}
    remaining: dict[tuple[str, ...], float] = {}
    for budget, spent_nanos in rows:
        key = (budget.id, budget.scope, budget.scope_id if budget.scope == "team" else "", budget.period)
        limit[key] = budget.limit_nanos / 1e9
        spent[key] = spent_nanos / 1e9
        remaining[key] = (budget.limit_nanos - spent_nanos) / 1e9
    return [
        Gauge("thrifty_budget_limit_usd", "Each budget's limit in USD.", LABELS, limit),
        Gauge(
            "thrifty_budget_spent_usd",
            "What each budget's current period has spent in USD (settled requests).",
            LABELS,
            spent,
        ),
        Gauge(
            "thrifty_budget_remaining_usd",
            "Each budget's limit minus its current period's spend, in USD.",
            LABELS,
            remaining,
        ),
    ]
