"""A report as rich terminal tables, CSV or JSON.

JSON carries every figure (money as exact decimal USD strings and integer
nano-dollars); CSV is the grouped table, one row per group, for spreadsheets.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from thrifty.reports.format import money_nanos, per_day, usd_nanos
from thrifty.reports.query import Group, Report, Totals
from thrifty.spend.money import nanos_to_usd
from thrifty.spend.periods import iso


def usd(nanos: int) -> str:
    """Dollars for people, by the one rule of :mod:`thrifty.reports.format` (exact amounts: JSON/CSV)."""
    return usd_nanos(nanos)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _per_mtok(value: float | None) -> str:
    return "-" if value is None else f"${value:,.3f}"


def group_row(g: Group) -> dict[str, Any]:
    t = g.totals
    return {"name": g.name, "share": g.share, **t.as_dict(),
            "cost_usd": f"{nanos_to_usd(t.cost_nanos):f}",
            "frontier_cost_usd": f"{nanos_to_usd(t.frontier_cost_nanos):f}",
            "savings_usd": f"{nanos_to_usd(t.savings_nanos):f}"}


def to_json(report: Report) -> str:
    f = report.filters
    doc = {
        "since": iso(f.since), "until": iso(f.until),
        "filters": {k: v for k, v in (("team", f.team), ("user", f.user), ("key", f.key), ("model", f.model),
                                     ("provider", f.provider), ("tag", f.tag)) if v},
        "group_by": report.group_by,
        "totals": group_row(Group("total", report.totals, 1.0 if report.totals.requests else 0.0)),
        "groups": [group_row(g) for g in report.groups],
        "models": [group_row(g) for g in report.models],
        "leaderboard": {"by": report.leaderboard_by, "rows": [group_row(g) for g in report.leaderboard]},
        "series": {
            "bucket_seconds": report.bucket_seconds,
            "points": [{"start": iso(b), "model": m, **t.as_dict()}
                       for b, per in sorted(report.series.items()) for m, t in sorted(per.items())],
        },
        "budgets": report.budgets,
        "feedback": report.feedback,
        "generated_at": iso(report.generated_at),
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


CSV_COLUMNS = ("requests", "errors", "cache_hits", "prompt_tokens", "completion_tokens", "cached_tokens",
               "cost_usd", "frontier_cost_usd", "savings_usd", "savings_pct", "usd_per_mtok", "share")


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([report.group_by, *CSV_COLUMNS])
    for g in [*report.groups, Group("TOTAL", report.totals, 1.0)]:
        row = group_row(g)
        w.writerow([g.name if g.name is not None else "", *(row[c] for c in CSV_COLUMNS)])
    return buf.getvalue()


def _table(title: str, first: str, groups: list[Group], total: Totals | None = None) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column(first)
    for col in ("requests", "share", "tokens in/out", "cached", "spend", "frontier", "saved", "saved %", "$/Mtok",
                "cache hits"):
        t.add_column(col, justify="right")

    rows = [(label(first, g.name), g.totals, g.share, None) for g in groups]
    if total is not None:
        rows.append(("total", total, 1.0 if total.requests else 0.0, "bold"))
    # one precision per money column (format.money): every amount in a column lines up
    spend = money_nanos([g.cost_nanos for _, g, _, _ in rows])
    frontier = money_nanos([g.frontier_cost_nanos for _, g, _, _ in rows])
    saved = money_nanos([g.savings_nanos for _, g, _, _ in rows])
    for i, (name, g, share, style) in enumerate(rows):
        t.add_row(name, f"{g.requests:,}", f"{share:.1%}", f"{g.prompt_tokens:,} / {g.completion_tokens:,}",
                  f"{g.cached_tokens:,}", spend[i], frontier[i], saved[i],
                  _pct(g.savings_pct), _per_mtok(g.usd_per_mtok), f"{g.cache_hits:,}", style=style)
    return t


def label(dimension: str, name: str | None) -> str:
    """A group's name; a missing one says why it is missing (no "(none)")."""
    if name is not None:
        return name
    return {"model": "(not served: refused or failed)", "provider": "(not served: refused or failed)",
            "team": "(no team)", "user": "(no user)", "key": "(no key)", "tag": "(untagged)"}.get(
                dimension, "(none)")


def print_report(report: Report, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    f, t = report.filters, report.totals
    console.print(
        f"[bold]thrifty report[/] {iso(f.since)} .. {iso(f.until)}: {t.requests:,} requests, "
        f"spend [bold]{usd(t.cost_nanos)}[/], all-frontier {usd(t.frontier_cost_nanos)}, "
        f"[bold green]saved vs all-frontier {usd(t.savings_nanos)} ({_pct(t.savings_pct)})[/], "
        f"{_per_mtok(t.usd_per_mtok)} per million tokens")
    console.print(_table(f"Spend by {report.group_by}", report.group_by, report.groups, t))
    if report.group_by != "model":
        console.print(_table("Traffic per model", "model", report.models))
    console.print(_table(f"Leaderboard: top {report.leaderboard_by}s by spend", report.leaderboard_by,
                         report.leaderboard))
    trend = Table(title="Price paid over time", title_justify="left")
    for col in ("period", "requests", "spend", "saved", "$/Mtok"):
        trend.add_column(col, justify="left" if col == "period" else "right")
    fmt = "%Y-%m-%d %H:00" if report.bucket_seconds < 86_400 else "%Y-%m-%d"
    import time as _time

    aggs = []
    for b, per in sorted(report.series.items()):
        agg = Totals()
        for m in per.values():
            for name in ("requests", "cost_nanos", "frontier_cost_nanos", "prompt_tokens", "completion_tokens"):
                setattr(agg, name, getattr(agg, name) + getattr(m, name))
        aggs.append((b, agg))
    spend_col = money_nanos([a.cost_nanos for _, a in aggs])
    saved_col = money_nanos([a.savings_nanos for _, a in aggs])
    for i, (b, agg) in enumerate(aggs):
        trend.add_row(_time.strftime(fmt, _time.gmtime(b)), f"{agg.requests:,}", spend_col[i],
                      saved_col[i], _per_mtok(agg.usd_per_mtok))
    console.print(trend)
    if report.feedback:
        ft = Table(title="User feedback per model (POST /v1/feedback)", title_justify="left")
        for col in ("model", "rated", "mean score", "thumbs up"):
            ft.add_column(col, justify="left" if col == "model" else "right")
        for q in report.feedback:
            ft.add_row(label("model", q["model"]), f"{q['rated']:,}", f"{q['mean_score']:.2f}",
                       f"{q['positive'] / q['rated']:.0%}")
        console.print(ft)
    if report.budgets:
        bt = Table(title="Budgets: burn-down at the current rate", title_justify="left")
        for col in ("budget", "period", "spent", "limit", "used", "$/day", "runs out", "status"):
            bt.add_column(col, justify="left" if col in ("budget", "period", "runs out", "status") else "right")
        spent = money_nanos([b["spent_nanos"] for b in report.budgets])
        limits = money_nanos([b["limit_nanos"] for b in report.budgets])
        for i, b in enumerate(report.budgets):
            bt.add_row(f"{b['scope']} {b['scope_id']}", b["period"], spent[i], limits[i],
                       _pct(b["used_pct"]), per_day(b["usd_per_day"] * 1e9), runs_out_text(b), b["status"])
        console.print(bt)


def runs_out_text(b: dict[str, Any]) -> str:
    """The run-out date only when it falls inside the period (or within a year for open windows)."""
    if b["status"] == "lasts the period":
        return "not this period"
    if b["status"] == "not within a year":
        return "not within a year"
    return (b["runs_out"] or "-")[:10]
