"""PNG charts of a report (matplotlib, Agg backend: no display needed).

Spend per period stacked by model, the average price paid per million tokens
over time, cumulative spend against the all-frontier counterfactual (the gap
is what routing saved), spend per model against the frontier counterfactual,
and each budget's burn-down with its projected exhaustion date.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thrifty.reports.query import Report
from thrifty.spend.db import Database

PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16",
           "#f97316", "#64748b", "#14b8a6", "#a855f7")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _usd(value: float) -> str:
    """Dollars for chart text ($ escaped: matplotlib would start math mode)."""
    return f"\\${value:,.2f}"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _style(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.figure.autofmt_xdate()


def spend_by_model(report: Report, path: Path) -> Path:
    plt = _plt()
    buckets = sorted(report.series)
    models = [g.name or "(none)" for g in report.models]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = report.bucket_seconds / 86_400 * 0.8
    bottom = [0.0] * len(buckets)
    xs = [_dt(b + report.bucket_seconds / 2) for b in buckets]
    for i, m in enumerate(models):
        ys = [report.series[b].get(m).cost_nanos / 1e9 if m in report.series[b] else 0.0 for b in buckets]
        if any(ys):
            ax.bar(xs, ys, width=width, bottom=bottom, label=m, color=PALETTE[i % len(PALETTE)])
            bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
    _style(ax, f"Spend per {'hour' if report.bucket_seconds < 86_400 else 'day'} by model", "USD")
    if models:
        ax.legend(fontsize=7, frameon=False, loc="upper left", ncol=2)
    return _save(plt, fig, path)


def _per_bucket(report: Report) -> list[tuple[float, int, int, int]]:
    """(bucket start, cost, frontier cost, tokens) summed over models."""
    out = []
    for b in sorted(report.series):
        per = report.series[b].values()
        out.append((b, sum(t.cost_nanos for t in per), sum(t.frontier_cost_nanos for t in per),
                    sum(t.tokens for t in per)))
    return out


def price_trend(report: Report, path: Path) -> Path:
    plt = _plt()
    rows = [r for r in _per_bucket(report) if r[3]]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    xs = [_dt(b + report.bucket_seconds / 2) for b, *_ in rows]
    ax.plot(xs, [c / 1e3 / tok for _b, c, _f, tok in rows], marker="o", color=PALETTE[0], label="paid")
    ax.plot(xs, [f / 1e3 / tok for _b, _c, f, tok in rows], marker=".", linestyle="--", color=PALETTE[3],
            label="all-frontier")
    ax.set_ylim(bottom=0)
    _style(ax, "Average price per million tokens", "USD / 1M tokens")
    ax.legend(frameon=False)
    return _save(plt, fig, path)


def savings(report: Report, path: Path) -> Path:
    plt = _plt()
    rows = _per_bucket(report)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    xs, paid, frontier = [], [], []
    acc_c = acc_f = 0
    for b, c, f, _tok in rows:
        acc_c += c
        acc_f += f
        xs.append(_dt(b + report.bucket_seconds))
        paid.append(acc_c / 1e9)
        frontier.append(acc_f / 1e9)
    ax.plot(xs, frontier, color=PALETTE[3], label="all-frontier (counterfactual)")
    ax.plot(xs, paid, color=PALETTE[0], label="paid with routing")
    ax.fill_between(xs, paid, frontier, color=PALETTE[2], alpha=0.25, label="saved")
    t = report.totals
    pct = f" ({t.savings_pct:.0f}%)" if t.savings_pct is not None else ""
    _style(ax, f"Cumulative spend: saved {_usd(t.savings_nanos / 1e9)}{pct}", "USD")
    ax.legend(frameon=False, loc="upper left")
    return _save(plt, fig, path)


def savings_by_model(report: Report, path: Path) -> Path:
    """What each model's traffic cost against what the same tokens would have cost on the frontier model."""
    plt = _plt()
    groups = [g for g in report.models if g.totals.requests][:12]
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.45 * max(len(groups), 1)), dpi=110)
    names = [f"{(g.name or '(none)').split('/')[-1]} ({g.share:.0%})" for g in groups][::-1]
    paid = [g.totals.cost_nanos / 1e9 for g in groups][::-1]
    frontier = [g.totals.frontier_cost_nanos / 1e9 for g in groups][::-1]
    ys = range(len(groups))
    ax.barh([y + 0.2 for y in ys], frontier, height=0.4, color=PALETTE[3], alpha=0.55, label="all-frontier")
    ax.barh([y - 0.2 for y in ys], paid, height=0.4, color=PALETTE[0], label="paid")
    ax.set_yticks(list(ys), names, fontsize=8)
    t = report.totals
    pct = f" ({t.savings_pct:.0f}%)" if t.savings_pct is not None else ""
    ax.set_title(f"Spend per model vs all-frontier: paid {_usd(t.cost_nanos / 1e9)}, "
                 f"saved {_usd(t.savings_nanos / 1e9)}{pct}", loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("USD (model: share of requests)")
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(frameon=False, loc="lower right")
    return _save(plt, fig, path)


def burndown(db: Database, budget: dict[str, Any], path: Path, now: float | None = None,
             closed: int | None = None) -> Path:
    import time

    from thrifty.reports.burndown import cumulative_spend

    plt = _plt()
    now = time.time() if now is None else now
    points = cumulative_spend(db, budget, now, closed)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    limit = budget["limit_nanos"] / 1e9
    spent = budget["spent_nanos"] / 1e9
    if points:
        ax.plot([_dt(t) for t, _ in points], [v / 1e9 for _, v in points], color=PALETTE[0], label="spent")
    runs_out = budget["runs_out_at"]
    horizon = budget["period_end"] or (runs_out if runs_out and runs_out > now else now + 7 * 86_400)
    if runs_out and budget["remaining_nanos"] > 0:
        rate = budget["usd_per_day"] / 86_400
        stop = min(runs_out, horizon)
        at_stop = spent + rate * (stop - now)
        label = (f"projection: runs out {budget['runs_out'][:10]}" if runs_out <= horizon
                 else f"projection: {_usd(at_stop)} at reset (lasts the period)")
        ax.plot([_dt(now), _dt(stop)], [spent, at_stop], linestyle="--", color=PALETTE[1], label=label)
        if runs_out <= horizon:
            ax.axvline(_dt(runs_out), color=PALETTE[1], alpha=0.4)
    ax.axhline(limit, color=PALETTE[3], label=f"limit {_usd(limit)}")
    if budget["period_end"]:
        ax.axvline(_dt(budget["period_end"]), color="#64748b", linestyle=":", label="period resets")
    ax.set_xlim(_dt(budget["period_start"]), _dt(max(horizon, now)))
    ax.set_ylim(0, max(limit, spent) * 1.1 or 1)
    _style(ax, f"Budget burn-down: {budget['scope']} {budget['scope_id']} ({budget['period']})", "USD")
    ax.legend(frameon=False, loc="upper left", fontsize=8)
    return _save(plt, fig, path)


def write_all(db: Database, report: Report, directory: Path, now: float | None = None) -> list[Path]:
    """Every chart of the report into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    out = [spend_by_model(report, directory / "spend_by_model.png"),
           price_trend(report, directory / "price_per_mtok.png"),
           savings(report, directory / "savings.png"),
           savings_by_model(report, directory / "savings_by_model.png")]
    for b in report.budgets:
        name = f"{b['scope']}_{b['scope_id']}_{b['period']}"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        out.append(burndown(db, b, directory / f"burndown_{safe}.png", now, report.closed_until))
    return out


def simulation(outcomes: list[Any], path: Path) -> Path:
    """Cost against quality, one point per what-if scenario (error bars: bootstrap 95% CIs)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, o in enumerate(outcomes):
        cost = o.cost_nanos / 1e9
        q = o.quality if o.quality is not None else o.predicted_quality
        if q is None:
            continue
        xerr = [[cost - o.cost_ci[0] / 1e9], [o.cost_ci[1] / 1e9 - cost]]
        yerr = [[q - o.quality_ci[0]], [o.quality_ci[1] - q]] if o.quality_ci and o.quality is not None else None
        ax.errorbar(cost, q, xerr=xerr, yerr=yerr, fmt="o", color=PALETTE[i % len(PALETTE)], capsize=3,
                    label=o.scenario)
    ax.set_xlabel("cost (USD)")
    ax.set_ylabel("quality (share correct / feedback)")
    ax.set_title("What-if routing: cost vs quality", loc="left", fontsize=12, fontweight="bold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, path)
