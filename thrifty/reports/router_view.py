"""``thrifty router status`` on the terminal: the learning status as rich tables, money by the one rule."""

from __future__ import annotations

from typing import Any

from thrifty.reports.format import money_nanos, pct, usd_nanos
from thrifty.router.status import LEVEL, Status


def interval_text(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"


def print_status(s: Status, console: Any) -> None:
    from rich.table import Table

    scope = f"team {s.team}" if s.team else "all teams"
    t = Table(title=f"Learned routing, {scope}: quality from every label; traffic of the last {s.days:g} days",
              title_justify="left")
    for col in ("model", "quality", f"{LEVEL:.0%} interval", "feedback", "judge", "routed", "share",
                "explored", "explored share", "exploration spend"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    spend = money_nanos([m.exploration_cost_nanos for m in s.models])
    for m, cost in zip(s.models, spend, strict=True):
        t.add_row(m.model, "-" if m.quality is None else f"{m.quality:.2f}", interval_text(m.interval),
                  f"{m.labels.get('feedback', 0):,}", f"{m.labels.get('judge', 0):,}", f"{m.routed:,}",
                  pct(m.routed_share), f"{m.explored:,}", pct(m.explored_share), cost)
    if s.models:
        console.print(t)
    else:
        console.print(f"No labels and no auto-routed requests in the last {s.days:g} days"
                      + (f" for team {s.team}." if s.team else "."))
    console.print(f"Auto-routed requests: {s.routed:,}; explored: {s.explored:,} ({pct(s.explored_share, 1)}); "
                  f"exploration spend {usd_nanos(s.exploration_cost_nanos)} of {usd_nanos(s.routed_cost_nanos)} "
                  f"({pct(s.exploration_spend_share, 1)}).")
    if not s.clusters:
        return
    names = sorted({n for c in s.clusters for n in c.models})
    c = Table(title="Clusters of prompt contexts (computed for display; the router learns per prompt, "
              "not per cluster): mean score / labels", title_justify="left")
    c.add_column("model", no_wrap=True)
    for cl in s.clusters:
        c.add_column(f"cluster {cl.index} ({cl.labels:,})", justify="right", no_wrap=True)
    for n in names:
        c.add_row(n, *(f"{cl.models[n]['mean']:.2f} / {int(cl.models[n]['labels'])}" if n in cl.models else "-"
                       for cl in s.clusters))
    console.print(c)
