"""A short terminal table of an evaluation report."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def _ci(pair) -> str:
    lo, hi = pair
    return "n/a" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"


def _pct(x: float) -> str:
    return "not reached" if math.isnan(x) else f"{x:.1%}"


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    for name, res in report["protocols"].items():
        if "curves" in res:
            other = res.get("trained_on_other_prompts", 0)
            extra = f"; training also on {other} other prompts" if other else ""
            t = Table(title=f"{name} (n={next(iter(res['routers'].values()))['n']}{extra})")
            for col in ("router", "APGR", "95% CI", "CPT(50%)", "CPT(80%)", "share drift (20%/50%)"):
                t.add_column(col)
            for kind, r in res["routers"].items():
                cal = r.get("calibration")
                drift = (f"{cal['share_0.2']['mean_realized']:.3f}/{cal['share_0.5']['mean_realized']:.3f}"
                         if cal else "")
                t.add_row(kind, f"{r['apgr']:.3f}", _ci(r["apgr_ci"]), _pct(r["cpt50"]), _pct(r["cpt80"]), drift)
        else:
            first = next(iter(res["routers"].values()))
            best = first["best_single"]
            t = Table(title=f"{name} (n={first['n']}; best single: {best}, "
                            f"accuracy {first['singles'][best]['quality']:.3f})")
            for col in ("router", "max accuracy", "cost to match best", "95% CI", "cost for 98%", "cost for 95%",
                        "within-task AUC"):
                t.add_column(col)
            for kind, r in res["routers"].items():
                s = r["cost_share_for_quality_share"]
                within = r.get("within_group_auc")
                t.add_row(kind, f"{r['max_quality']:.3f}", _pct(r["cost_to_match_best_share"]),
                          _ci(r["cost_to_match_best_share_ci"]), _pct(s["0.98"]), _pct(s["0.95"]),
                          "" if within is None else f"{within:.3f}")
        console.print(t)
        _print_diagnostics(res, console)


def _print_diagnostics(res: dict, console: Console) -> None:
    """Group signal of the learned routers and the in-domain reference, when the report has them."""
    for kind, r in res["routers"].items():
        g = r.get("group_signal")
        if g:
            console.print(
                f"  {kind}: predicted vs true gain over {g['groups']} held-out groups r = {g['group_gain_corr']:.2f}; "
                f"within-group AUC {g['within_group_auc']:.3f} ({g['groups_with_auc']} groups); "
                f"true group means + its within-group ranking: APGR {g['apgr_true_group_means']:.3f}")
    ref = res.get("in_domain_cv")
    if ref:
        rows = ", ".join(f"{kind} {r['apgr']:.3f}" for kind, r in ref.items())
        console.print(f"  in-domain reference (cross-validated on the test benchmark's own labels): {rows}")
