"""``thrifty router train | score | eval | calibrate | status | learn``.

``status`` and ``learn`` read the spend database; their handlers (CLI layer) use the reports'
database lookup and money formatting."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thrifty.cli import actions
from thrifty.errors import UsageError

ALIAS_HELP = ("model columns that name the same model in different sources, merged under TO "
              "(e.g. mistralai/mixtral-8x7b-chat=mistralai/Mixtral-8x7B-Instruct-v0.1)")


def register(sub: argparse._SubParsersAction) -> None:
    rsub = actions(sub, "router", "train, score with and evaluate learned routers")

    train = rsub.add_parser("train", help="train a router on labelled benchmark data")
    train.add_argument("--data", nargs="+", required=True, metavar="PATH",
                       help="files, directories or URLs of RouteLLM/RouterBench CSV data")
    train.add_argument("--out", required=True, metavar="ROUTER_DIR", help="where to write the router")
    train.add_argument("--predictor", default="ensemble", help="ensemble (default), knn, factor, length, random")
    train.add_argument("--exclude-ids", metavar="FILE", help="file of prompt ids (one a line) to leave out")
    train.add_argument("--alias", nargs="+", default=[], metavar="FROM=TO", help=ALIAS_HELP)
    train.set_defaults(func=_train)

    score = rsub.add_parser("score", help="predict every model's quality for prompts in a JSONL file")
    score.add_argument("--router", required=True, metavar="ROUTER_DIR")
    score.add_argument("--input", required=True, metavar="prompts.jsonl", help='lines of {"id": ..., "prompt": "..."}')
    score.add_argument("--output", required=True, metavar="scores.jsonl")
    score.set_defaults(func=_score)

    cal = rsub.add_parser("calibrate", help="add a named profile calibrated on a sample of your own prompts")
    cal.add_argument("--router", required=True, metavar="ROUTER_DIR")
    cal.add_argument("--input", required=True, metavar="prompts.jsonl", help='lines of {"id": ..., "prompt": "..."}')
    cal.add_argument("--name", required=True, help="profile name (send it as the model to use it)")
    knob = cal.add_mutually_exclusive_group(required=True)
    knob.add_argument("--share", type=float, metavar="S",
                      help="send this share of the prompts to the most expensive model")
    knob.add_argument("--keep", type=float, metavar="Q",
                      help="keep this share of the best predicted mean quality at the lowest cost (auto: 0.98)")
    cal.set_defaults(func=_calibrate)

    st = rsub.add_parser("status", help="what the router learnt from feedback and judge grades, per model",
                         description="Per model: the learned quality (Beta posterior of its labels: mean and "
                         "90%% credible interval), labels by source, its share of the auto-routed requests and the "
                         "exploration spend of the last --days days; and clusters of the labels' prompt contexts "
                         "(computed for display; the router learns per prompt, not per cluster).")
    _db_args(st)
    st.add_argument("--team", help="only this team's labels and requests")
    st.add_argument("--days", default="30", help="traffic window in days (default 30); labels: all")
    st.add_argument("--format", default="table", help="table (default) or json")
    st.set_defaults(func=_status)
    _one_line_errors(st, "thrifty router status")

    learn = rsub.add_parser("learn", help="add the labels missing for rated routed requests (idempotent)",
                            description="Complete the router_labels table from the ledger and the feedback table: "
                            "every rated request with a prompt context (routed by auto) gets its label; a label "
                            "whose rating changed is updated. Running gateways load them within sync_s.")
    _db_args(learn)
    learn.set_defaults(func=_learn)
    _one_line_errors(learn, "thrifty router learn")

    ev = rsub.add_parser("eval", help="held-out evaluation protocols, JSON report and PNG plots")
    ev.add_argument("--data", nargs="+", required=True, metavar="PATH")
    ev.add_argument("--out", default="artifacts/router-eval", metavar="DIR")
    ev.add_argument("--protocol", nargs="+", default=None,
                    help="mmlu-subjects, mmlu-to-gsm8k, routerbench-cv (default: those the data allows)")
    ev.add_argument("--folds", type=int, default=5)
    ev.add_argument("--bootstrap", type=int, default=500, help="bootstrap rounds for confidence intervals")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--alias", nargs="+", default=[], metavar="FROM=TO", help=ALIAS_HELP)
    ev.add_argument("--with-other-data", action="store_true",
                    help="pair protocols also train on every prompt outside the test benchmark that has labels "
                         "for both models (e.g. GSM8K and aliased RouterBench rows for mmlu-subjects)")
    ev.set_defaults(func=_eval)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="spend database (sqlite:///path.db or postgresql://...); "
                   "default: the gateway config's, else <data dir>/spend.db")
    p.add_argument("--config", help="gateway TOML config to take the database from")
    p.add_argument("--data-dir", help="gateway data dir holding spend.db (default: $THRIFTY_DATA_DIR or .thrifty)")


def _one_line_errors(p: argparse.ArgumentParser, prog: str) -> None:
    """A bad flag value is one line on stderr and exit 2 (argparse would print the usage too)."""

    def error(message: str) -> None:
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    p.error = error  # type: ignore[method-assign]


def _status(args: argparse.Namespace) -> int:
    import time

    from thrifty.reports.source import open_database
    from thrifty.router.status import status

    if args.format not in ("table", "json"):
        raise UsageError(f"--format must be table or json, got {args.format!r}")
    try:
        days = float(args.days)
    except ValueError:
        days = -1.0
    if not 0 < days <= 36_500:
        raise UsageError(f"--days must be a positive number of days, got {args.days!r}")
    db = open_database(args.database_url, args.config, args.data_dir)
    try:
        s = status(db, team=args.team, days=days, now=time.time())
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps(s.as_dict(), indent=2))
        return 0
    from rich.console import Console

    from thrifty.reports.router_view import print_status

    print_status(s, Console(width=None if sys.stdout.isatty() else 160))
    return 0


def _learn(args: argparse.Namespace) -> int:
    from thrifty.reports.feedback import learn_from_feedback
    from thrifty.reports.source import open_database
    from thrifty.router.status import check_schema

    db = open_database(args.database_url, args.config, args.data_dir)
    try:
        check_schema(db)
        added, updated = learn_from_feedback(db)
    finally:
        db.close()
    print(f"added {added} label(s), updated {updated} from feedback")
    return 0


def _train(args: argparse.Namespace) -> int:
    from thrifty.router import data as routing_data
    from thrifty.router.router import Router

    data = routing_data.load(args.data, routing_data.parse_aliases(args.alias))
    if args.exclude_ids:
        drop = set(Path(args.exclude_ids).read_text().split())
        data = data.where(i not in drop for i in data.ids)
    router = Router.train(data, args.predictor)
    out = router.save(args.out)
    meta = router.meta
    print(f"trained a {meta['predictor']} router on {meta['n_prompts']} prompts, {len(router.models)} models, "
          f"in {meta['training_seconds']} s -> {out}")
    for name, profile in sorted(router.profiles.items()):
        print(f"  profile {name}: {profile}")
    return 0


def _read_prompts(path: str) -> list[tuple[object, str]]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise UsageError(f'{path}:{n}: expected {{"id": ..., "prompt": "..."}}')
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise UsageError(f"{path}:{n}: prompt must be a non-empty string")
        rows.append((row.get("id"), row["prompt"]))
    return rows


def _score(args: argparse.Namespace) -> int:
    from thrifty.router.router import Router

    router = Router.load(args.router)
    rows = _read_prompts(args.input)
    quality = router.score_many([p for _, p in rows]) if rows else []
    with open(args.output, "w", encoding="utf-8") as out:
        out.writelines(json.dumps({"id": ident, "quality": dict(zip(router.models, map(float, q)))}) + "\n" for (ident, _), q in zip(rows, quality))
    print(f"scored {len(rows)} prompts -> {args.output}", file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from thrifty.router.calibrate import (
        predicted_quality,
        share_for_weight,
        weight_for_share,
        weight_keeping,
    )
    from thrifty.router.router import Profile, Router

    router = Router.load(args.router)
    prompts = [p for _, p in _read_prompts(args.input)]
    if len(prompts) < 20:
        raise UsageError(f"{args.input}: need at least 20 prompts to calibrate on, got {len(prompts)}")
    if not args.name.strip() or args.name != args.name.strip():
        raise UsageError("--name must be a non-empty name without surrounding spaces")
    if args.share is not None and not 0.0 <= args.share <= 1.0:
        raise UsageError(f"--share must be within [0, 1], got {args.share}")
    if args.keep is not None and not 0.0 < args.keep <= 1.0:
        raise UsageError(f"the quality share to keep must be within (0, 1], got {args.keep}")
    P = router.score_many(prompts)
    unit = router.unit_costs()
    # a share may need a negative weight (favour the expensive model): see weight_for_share
    weight = weight_for_share(P, unit, args.share) if args.share is not None else weight_keeping(P, unit, args.keep)
    profile = Profile("cost_weight", weight)
    top = router.models[int(np.argmax(unit))]
    replaced = args.name in router.profiles
    router.profiles[args.name] = profile
    router.save_doc(args.router)
    share = share_for_weight(P, unit, weight)
    print(f"{'replaced' if replaced else 'added'} profile {args.name!r}: {profile} "
          f"(on {len(prompts)} prompts: {share:.1%} to {top}, "
          f"mean predicted quality {predicted_quality(P, unit, weight):.3f} "
          f"vs {predicted_quality(P, unit, 0.0):.3f} at best)")
    if args.share is not None:
        # The share is estimated from a sample: on new traffic like it, it misses by about this much.
        error = float(np.sqrt(max(share * (1 - share), 1e-12) / len(prompts)))
        print(f"on new traffic like this sample, expect {share:.1%} +- {error:.1%} (standard error over "
              f"{len(prompts)} prompts; calibrate on more of your prompts to narrow it)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from thrifty.router import data as routing_data
    from thrifty.router.evaluate import Evaluator, plot
    from thrifty.router.report import print_summary

    data = routing_data.load(args.data, routing_data.parse_aliases(args.alias))
    protocols = tuple(args.protocol) if args.protocol else _possible_protocols(data.groups)
    if not protocols:
        raise UsageError("the data allows no protocol: give RouteLLM MMLU (+GSM8K) and/or RouterBench files")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Evaluator(data, folds=args.folds, seed=args.seed, rounds=args.bootstrap,
                       other_data=args.with_other_data).run(protocols)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = plot(report, out)
    print_summary(report)
    print(f"report: {out / 'report.json'}; plots: {', '.join(str(p) for p in plots)}")
    return 0


def _possible_protocols(groups: list[str]) -> tuple[str, ...]:
    have = {g.split("/")[0] for g in groups}
    out = []
    if "mmlu" in have:
        out.append("mmlu-subjects")
        if "gsm8k" in have:
            out.append("mmlu-to-gsm8k")
    if "routerbench" in have:
        out.append("routerbench-cv")
    return tuple(out)
