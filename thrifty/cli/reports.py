"""``thrifty report`` and ``thrifty simulate`` (argparse only at import time)."""

from __future__ import annotations

import argparse

from thrifty.cli import actions

GROUP_CHOICES = ("team", "user", "key", "tag", "model", "provider")


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ledger")
    g.add_argument("--database-url", help="spend database (sqlite:///path.db or postgresql://...); "
                   "default: the gateway config's, else <data dir>/spend.db")
    g.add_argument("--config", help="gateway TOML config to take the database and models from")
    g.add_argument("--data-dir", help="gateway data dir holding spend.db (default: $THRIFTY_DATA_DIR or .thrifty)")


def _range_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("time range and filters")
    g.add_argument("--since", help="ISO 8601 time or unix seconds (default: 30 days before --until)")
    g.add_argument("--until", help="ISO 8601 time, unix seconds or 'now' (default: now)")
    g.add_argument("--month", help="a calendar month in UTC, e.g. 2026-11 (instead of --since/--until)")
    g.add_argument("--days", type=int, help="the last N days (instead of --since)")
    for name in ("team", "user", "key", "model", "provider", "tag"):
        g.add_argument(f"--{name}", help=f"only this {name}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="spend, savings, price per token, leaderboard and budget burn-down from the ledger",
        description="Report on the spend ledger for a time range, grouped by team, user, key, tag, model or "
        "provider: spend, requests, tokens, savings against sending everything to the frontier model, the "
        "average price paid per million tokens over time, traffic per model, cache hits, a leaderboard and "
        "when each budget runs out at the current rate.")
    _source_args(p)
    _range_args(p)
    p.add_argument("--by", default="team", choices=GROUP_CHOICES, help="group by (default: team)")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--output", "-o", help="write CSV/JSON here instead of stdout")
    p.add_argument("--charts", metavar="DIR", help="also write PNG charts into DIR")
    p.add_argument("--no-rollup", action="store_true", help="read the raw ledger only (no rollup table writes)")
    p.set_defaults(func=_report)

    s = subparsers.add_parser(
        "simulate", help="what-if: re-route past traffic under other profiles, prices or policy (no provider calls)",
        description="Re-run routing on past traffic without calling any provider and report the cost it would "
        "have had and, where quality labels exist (benchmark replay data, user feedback), the quality, with "
        "bootstrap 95% confidence intervals. Traffic comes from the ledger (its stored router scores; the "
        "default), a JSONL of prompts (--prompts) or benchmark replay data (--replay).")
    _source_args(s)
    _range_args(s)
    src = s.add_mutually_exclusive_group()
    src.add_argument("--prompts", metavar="JSONL", help="lines of {\"prompt\": ...} or {\"messages\": [...]}, "
                     "optionally with \"labels\" {model: 0..1} and \"usage\" "
                     "{model: {prompt_tokens, completion_tokens}}")
    src.add_argument("--replay", metavar="SOURCE", help="benchmark replay data: 'packaged' (the demo's prompts), "
                     "'shared' (all RouterBench prompts in ../shared/data) or a records .jsonl(.gz) file")
    s.add_argument("--limit", type=int, help="only the first N prompts of --replay/--prompts")
    s.add_argument("--profile", action="append", default=[], help="a routing profile by name (repeatable); "
                   "default: auto-cheap, auto and auto-best")
    s.add_argument("--cost-weight", action="append", type=float, default=[], help="a cost weight knob (repeatable)")
    s.add_argument("--target-quality", action="append", type=float, default=[],
                   help="a target quality knob (repeatable)")
    s.add_argument("--prices", metavar="JSON", help="price list to simulate: a file or inline JSON "
                   "{model: {input_cost_per_token, output_cost_per_token}}")
    s.add_argument("--policy", metavar="JSON", help="policy rules to simulate: a file or inline JSON, e.g. "
                   "'{\"deny_providers\": [\"anthropic\"]}' (the spend policy format)")
    s.add_argument("--router", help="router directory (default: the config's, else the packaged one)")
    s.add_argument("--format", default="table", choices=("table", "csv", "json"))
    s.add_argument("--output", "-o", help="write CSV/JSON here instead of stdout")
    s.add_argument("--chart", metavar="PNG", help="also plot cost against quality for each scenario")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    s.add_argument("--policy-model", action="append", default=[], metavar="MODEL",
                   help="also estimate the mean quality of 'always MODEL' on the ledger's rated routed requests by "
                   "inverse propensity weighting (IPS and self-normalised, 90%% intervals, effective sample size); "
                   "repeatable; ledger source, table or json format")
    s.set_defaults(func=_simulate)

    rsub = actions(
        subparsers, "requests", "individual requests from the ledger (no prompt text)",
        description="One line per request from the spend ledger, newest first: time, key, team, model, "
        "status, tokens, cost. No prompt or answer text (the ledger keeps none).")
    ls = rsub.add_parser("list", help="list requests, filtered and paged",
                         description="List requests newest first; --cursor NEXT (printed at the end) "
                         "shows the next page.")
    _source_args(ls)
    g = ls.add_argument_group("filters")
    for name in ("key", "team", "user", "model", "provider"):
        g.add_argument(f"--{name}", help=f"only this {name}" + (" (the model that served it)" if name == "model" else ""))
    g.add_argument("--status", type=int, help="only this HTTP status, e.g. 200 or 429")
    g.add_argument("--since", help="ISO 8601 time or unix seconds")
    g.add_argument("--until", help="ISO 8601 time, unix seconds or 'now'")
    ls.add_argument("--limit", type=int, default=50, help="rows per page (1-500, default 50)")
    ls.add_argument("--cursor", help="the next_cursor of the previous page")
    ls.add_argument("--format", default="table", choices=("table", "json"))
    ls.set_defaults(func=_requests_list)


def _filters(args: argparse.Namespace) -> object:
    import time

    from thrifty.errors import UsageError
    from thrifty.reports.filters import Filters
    from thrifty.reports.query import month_range
    from thrifty.reports.source import parse_when

    if args.month and (args.since or args.until or args.days):
        raise UsageError("--month cannot be combined with --since, --until or --days")
    if args.days is not None and (args.days <= 0 or args.since):
        raise UsageError("--days must be a positive number of days and cannot be combined with --since")
    try:
        if args.month:
            since, until = month_range(args.month)
        else:
            until = parse_when(args.until, "until") if args.until else time.time() + 1
            days = args.days or 30
            since = parse_when(args.since, "since") if args.since else until - days * 86_400
        return Filters(since=since, until=until, team=args.team, user=args.user, key=args.key, model=args.model,
                       provider=args.provider, tag=args.tag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _emit(text: str, output: str | None) -> None:
    import sys

    if output:
        from pathlib import Path

        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thrifty.reports import render
    from thrifty.reports.query import build_report
    from thrifty.reports.source import open_database

    f = _filters(args)
    db = open_database(args.database_url, args.config, args.data_dir)
    try:
        report = build_report(db, f, args.by, use_rollup=not args.no_rollup)  # type: ignore[arg-type]
        if args.format == "json":
            _emit(render.to_json(report), args.output)
        elif args.format == "csv":
            _emit(render.to_csv(report), args.output)
        else:
            import sys

            from rich.console import Console

            render.print_report(report, Console(width=None if sys.stdout.isatty() else 140))
        if args.charts:
            from thrifty.reports.charts import write_all

            for path in write_all(db, report, Path(args.charts)):
                print(f"chart: {path}")
    finally:
        db.close()
    return 0


def _json_arg(value: str | None, name: str) -> dict | None:
    import json
    from pathlib import Path

    from thrifty.errors import UsageError

    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as exc:
            raise UsageError(f"--{name}: cannot read {value}: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--{name}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--{name}: expected a JSON object")
    return doc


def _simulate(args: argparse.Namespace) -> int:
    import csv
    import io
    import json
    from pathlib import Path

    from thrifty.config import load_config
    from thrifty.errors import UsageError
    from thrifty.reports import simulate as sim
    from thrifty.router import Profile, Router, default_router_path

    if args.limit is not None and args.limit <= 0:
        raise UsageError("--limit must be positive")
    if args.policy_model and (args.replay or args.prompts):
        raise UsageError("--policy-model estimates from the ledger's rated routed requests: drop --replay/--prompts")
    if args.policy_model and args.format == "csv":
        raise UsageError("--policy-model: use --format table or json")
    config = load_config(args.config)
    router = Router.load(args.router or config.router_path or default_router_path())
    pool = sim.Pool(config.models, router.models, prices=_json_arg(args.prices, "prices"),
                    policy=_json_arg(args.policy, "policy"), expected_output_tokens=config.expected_output_tokens)
    exp_out = config.expected_output_tokens

    profiles: dict = dict(router.profiles)
    for name, pc in config.profiles.items():
        if pc.target_quality is not None:
            profiles[name] = Profile.target_quality(pc.target_quality)
        elif pc.cost_weight is not None:
            profiles[name] = Profile.cost_weight(pc.cost_weight)
    scenarios: list = []
    for name in args.profile or ([] if (args.cost_weight or args.target_quality) else sim.default_scenarios(profiles)):
        if name not in profiles:
            raise UsageError(f"unknown routing profile {name!r}; known: {', '.join(sorted(profiles))}")
        scenarios.append(sim.Scenario(name, profiles[name]))
    scenarios += [sim.Scenario(f"cost_weight={w:g}", Profile.cost_weight(w)) for w in args.cost_weight]
    scenarios += [sim.Scenario(f"target_quality={q:g}", Profile.target_quality(q)) for q in args.target_quality]

    off: list = []
    if args.replay:
        from thrifty.providers import replay_records as rr

        if args.replay == "packaged":
            records = rr.read_packaged()
        elif args.replay == "shared":
            if not (rr.DEFAULT_SHARED / "routerbench").is_dir():
                raise UsageError(f"no shared data at {rr.DEFAULT_SHARED}")
            records = rr.routerbench_records(rr.DEFAULT_SHARED)
        else:
            if not Path(args.replay).is_file():
                raise UsageError(f"--replay: no such file {args.replay} (or use 'packaged' / 'shared')")
            records = rr.read_packaged(Path(args.replay))
        items = sim.items_from_replay(router, records, exp_out, limit=args.limit)
        source = f"replay data ({args.replay})"
    elif args.prompts:
        items = sim.items_from_jsonl(Path(args.prompts), router, exp_out)[: args.limit]
        source = f"prompts ({args.prompts})"
    else:
        from thrifty.reports.source import open_database

        f = _filters(args)
        db = open_database(args.database_url, args.config, args.data_dir)
        try:
            items = sim.items_from_ledger(db, f, exp_out)
            off = _off_policy(db, f, args.policy_model, config.models)
        finally:
            db.close()
        source = "the ledger"
        scenarios.insert(0, sim.Scenario(sim.AS_SERVED))
    if not items and off:
        _emit_off_policy(off, args)
        return 0
    if not items:
        raise UsageError(f"nothing to simulate: {source} has no routed requests with router scores in range")
    frontier = config.frontier_model
    if frontier in pool.all_infos:
        scenarios.append(sim.Scenario(f"all {frontier}", fixed=frontier))
    outcomes = sim.run(router, pool, items, scenarios, seed=args.seed)

    if args.format == "json":
        doc = {"source": source, "requests": len(items), "scenarios": [o.as_dict() for o in outcomes]}
        if off:
            doc["off_policy"] = [o.as_dict() for o in off]
        _emit(json.dumps(doc, indent=2) + "\n", args.output)
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ("scenario", "requests", "cost_usd", "cost_ci_usd", "exact_cost_share", "quality", "quality_ci",
                "labelled", "predicted_quality")
        w.writerow(cols)
        for o in outcomes:
            d = o.as_dict()
            w.writerow([json.dumps(d[c]) if isinstance(d[c], list) else d[c] for c in cols])
        _emit(buf.getvalue(), args.output)
    else:
        _print_table(outcomes, source, len(items))
        if off:
            _print_off_policy(off)
    if args.chart:
        from thrifty.reports.charts import simulation

        print(f"chart: {simulation(outcomes, Path(args.chart))}")
    return 0


def _off_policy(db: object, f: object, models: list[str], configured: object) -> list:
    """The IPS estimates of "always MODEL" for each ``--policy-model`` (thrifty.reports.offpolicy)."""
    if not models:
        return []
    from thrifty.errors import UsageError
    from thrifty.reports import offpolicy

    served, scores, props = offpolicy.logged(db, f)
    unknown = [m for m in models if m not in configured and m not in served]  # type: ignore[operator]
    if unknown:
        raise UsageError(f"--policy-model: {', '.join(unknown)} is neither a configured model nor in the ledger")
    if not served:
        raise UsageError("--policy-model: no rated request in range was routed by auto with a logged propensity "
                         "(rate answers with POST /v1/feedback)")
    return [offpolicy.estimate(m, served, scores, props) for m in models]


def _emit_off_policy(off: list, args: argparse.Namespace) -> None:
    import json

    if args.format == "json":
        _emit(json.dumps({"source": "the ledger", "off_policy": [o.as_dict() for o in off]}, indent=2) + "\n",
              args.output)
    else:
        _print_off_policy(off)


def _print_off_policy(off: list) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    def ci(v: tuple[float, float] | None) -> str:
        return "-" if v is None else f"{v[0]:.3f}-{v[1]:.3f}"

    console = Console(width=None if sys.stdout.isatty() else 140)
    t = Table(title=f"Off-policy estimate of 'always MODEL' on {off[0].rated:,} rated routed requests "
              "(inverse propensity weighting)", title_justify="left")
    for col in ("policy", "served by it", "IPS", "90% CI", "SNIPS", "90% CI", "ESS"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for o in off:
        t.add_row(f"always {o.model}", f"{o.matched:,}", "-" if o.ips is None else f"{o.ips:.3f}",
                  ci(o.ips_interval), "-" if o.snips is None else f"{o.snips:.3f}", ci(o.snips_interval),
                  f"{o.ess:.1f}")
    console.print(t)
    for o in off:
        console.print(f"always {o.model}: confidence {o.confidence}.")


def _print_table(outcomes: list, source: str, n: int) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    from thrifty.reports.render import usd

    console = Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title=f"What-if routing of {n:,} requests from {source}", title_justify="left")
    for col in ("scenario", "cost", "95% CI", "quality", "95% CI", "labelled", "predicted"):
        t.add_column(col, justify="left" if col == "scenario" else "right", no_wrap=True)
    for o in outcomes:
        t.add_row(o.scenario, usd(o.cost_nanos), f"{usd(o.cost_ci[0])}-{usd(o.cost_ci[1])}",
                  "-" if o.quality is None else f"{o.quality:.1%}",
                  "-" if o.quality_ci is None else f"{o.quality_ci[0]:.1%}-{o.quality_ci[1]:.1%}",
                  f"{o.labelled:,}", "-" if o.predicted_quality is None else f"{o.predicted_quality:.2f}")
    console.print(t)
    mix = Table(title="Routing mix per scenario", title_justify="left")
    mix.add_column("scenario", no_wrap=True)
    mix.add_column("models (share of requests)")
    for o in outcomes:
        mix.add_row(o.scenario, ", ".join(f"{m} {s:.0%}" for m, s in list(o.shares.items())[:4]))
    console.print(mix)
    estimated = [o for o in outcomes if o.exact_cost_share < 1]
    if estimated:
        console.print("[dim]Estimated costs: where the chosen model's real token counts are unknown (it did not "
                      "serve the request, or the data has no record of it), the request's known token counts "
                      "are priced at the chosen model's prices. Exact share: "
                      + ", ".join(f"{o.scenario} {o.exact_cost_share:.1%}" for o in estimated) + ".[/]")


def _requests_list(args: argparse.Namespace) -> int:
    import json
    import sys

    from thrifty.errors import UsageError
    from thrifty.reports.format import money
    from thrifty.reports.source import open_database, parse_when
    from thrifty.spend.requests import RequestQuery, RequestQueryError, list_requests

    q = RequestQuery(key=args.key, team=args.team, user=args.user, model=args.model, provider=args.provider,
                     status=args.status, since=parse_when(args.since, "since") if args.since else None,
                     until=parse_when(args.until, "until") if args.until else None, limit=args.limit,
                     cursor=args.cursor)
    db = open_database(args.database_url, args.config, args.data_dir)
    try:
        page = list_requests(db, q)
    except RequestQueryError as exc:
        raise UsageError(str(exc)) from None
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps(page, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from thrifty.spend.periods import iso

    t = Table(title=f"{len(page['data'])} requests, newest first", title_justify="left")
    for col in ("time (UTC)", "key", "team", "model", "status", "tokens in/out", "cost", "ms"):
        t.add_column(col, justify="right" if col in ("status", "tokens in/out", "cost", "ms") else "left",
                     no_wrap=True)
    rows = page["data"]
    costs = money([float(r["cost_usd"]) for r in rows])
    for r, cost in zip(rows, costs, strict=True):
        t.add_row(iso(r["ts"])[:19], r["key_id"] or "-", r["team_id"] or "-",
                  r["served_model"] or f"(not served: {r['error_type'] or 'error'})", str(r["status"]),
                  f"{r['prompt_tokens']:,}/{r['completion_tokens']:,}", cost,
                  "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}")
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    if page["next_cursor"]:
        print(f"next page: --cursor {page['next_cursor']}")
    return 0
