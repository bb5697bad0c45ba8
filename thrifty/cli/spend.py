"""``thrifty keys|teams|users|budgets|policies|spend``: spend administration on the database.

Works directly on the spend database (``--db URL``, else ``--data-dir``'s
SQLite file), so it needs no running gateway; gateways pick changes up
within about a second. Only argparse is imported at registration time.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

POLICY_RULES_HELP = """rules (all optional; patterns may use * and ?):
  allow_models, deny_models            model names the scope may / may not use
  allow_providers, deny_providers      providers, e.g. ["openai", "anthropic"]
  allow_origin_countries,              ISO 3166 alpha-2 countries of the model's developer,
  deny_origin_countries                e.g. ["US", "FR"]; a model of unknown origin is refused by either list
  allow_regions, deny_regions          hosting regions, e.g. ["us", "eu"] (every region must be allowed)
  max_usd_per_mtok                     ceiling on the input and the output price, USD per million tokens
  routing_profile                      what "auto" means for this key or team, e.g. "auto-cheap"
"""
_ADMIN_NOTE = "Works on the spend database directly; a running gateway picks changes up within a second."


def _common(p: argparse.ArgumentParser) -> None:
    # first-hour: the flag vocabulary every command group shares (report, simulate, requests too):
    # --database-url, --data-dir, --format json; --db and --json still work (deprecated spellings).
    p.add_argument("--database-url", "--db", dest="db", metavar="URL",
                   help="spend database URL (sqlite:////path/spend.db or postgresql://...); default: "
                   "$THRIFTY_DATABASE_URL, else DATA_DIR/spend.db (--db: deprecated spelling)")
    p.add_argument("--data-dir", metavar="DIR", help="the gateway's data directory (default: the gateway's default)")
    p.add_argument("--format", dest="format", choices=("table", "json"), default="table",
                   help="output format (default: table)")
    p.add_argument("--json", dest="format", action="store_const", const="json", help=argparse.SUPPRESS)


def _db(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from thrifty.spend import database_url
    from thrifty.spend.db import Database
    from thrifty.spend.schema import migrate

    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        try:
            from thrifty.paths import default_data_dir

            data_dir = default_data_dir()
        except ImportError:
            data_dir = Path(os.environ.get("THRIFTY_DATA_DIR", ".thrifty"))
    url = database_url({"database_url": args.db} if args.db else {}, data_dir)
    db = Database(url)
    migrate(db)
    return db


def _check_text(args: argparse.Namespace) -> None:
    """A usage error for an argument that is not UTF-8 text (Python hands such bytes over as
    lone surrogates): stored, it would break every request of the key it is a tag of."""
    from thrifty.errors import UsageError
    from thrifty.jsonlimits import text_error

    for name, value in vars(args).items():
        if name in ("db", "data_dir", "func") or not isinstance(value, (str, list, tuple)):
            continue  # paths may be any bytes the file system takes
        why = text_error(value)
        if why is not None:
            raise UsageError(f"--{name.replace('_', '-')} {why}; arguments must be UTF-8 text")


def _run(args: argparse.Namespace, action: Any) -> int:
    from thrifty.errors import UsageError
    from thrifty.spend.admin_ops import AdminError

    _check_text(args)
    try:
        db = _db(args)
    except Exception as exc:  # noqa: BLE001 (any failure to open the database is a usage error)
        raise UsageError(f"cannot open the spend database: {exc}") from None
    try:
        result = action(db)
    except AdminError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        db.close()
    _print(result, args.format == "json")
    return 0


def _print(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, (list, dict)):
        print(json.dumps(result, indent=2, default=str))
        return
    rows = result if isinstance(result, list) else [result]
    if isinstance(result, dict) and "groups" in result:
        print(f"total {result['total_cost_usd']} USD over {result['requests']} requests")
        rows = result["groups"]
    if not rows:
        print("(none)")
        return
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items() if v not in (None, {}, [], "")))


def _time(text: str | None) -> float | None:
    if text is None:
        return None
    from thrifty.spend.periods import parse_time

    return parse_time(text)


def _scope(args: argparse.Namespace) -> tuple[str, str]:
    from thrifty.errors import UsageError

    given = [(s, getattr(args, s)) for s in ("key", "user", "team") if getattr(args, s, None)]
    if len(given) != 1:
        raise UsageError("give exactly one of --key, --user, --team")
    return given[0]


# --- handlers ---------------------------------------------------------------------


def _keys_create(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    def act(db: Any) -> Any:
        record, secret = admin_ops.create_key(
            db, name=args.name, user_id=args.user, team_id=args.team, tags=args.tag or None,
            metadata=json.loads(args.metadata) if args.metadata else None, expires_at=_time(args.expires),
            rpm=args.rpm, tpm=args.tpm)
        return {**record, "key": secret, "note": "shown only this once; store it now"}

    return _run(args, act)


def _keys_list(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.list_keys(db, team_id=args.team, user_id=args.user,
                                                 include_revoked=args.all))


def _keys_revoke(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.revoke_key(db, args.key_id))


def _teams_create(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.create_team(db, args.team_id, name=args.name, rpm=args.rpm, tpm=args.tpm))


def _teams_list(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, admin_ops.list_teams)


def _users_create(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.create_user(db, args.user_id, team_id=args.team, name=args.name,
                                                   email=args.email))


def _users_list(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.list_users(db, args.team))


def _budgets_set(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    scope, scope_id = _scope(args)
    return _run(args, lambda db: admin_ops.set_budget(
        db, scope, scope_id, amount_usd=args.amount, period=args.period, window_start=_time(args.start),
        window_end=_time(args.end), soft_thresholds=args.soft or [], webhook_url=args.webhook))


def _budgets_list(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.list_budgets(db))


def _budgets_delete(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    def act(db: Any) -> Any:
        admin_ops.delete_budget(db, args.budget_id)
        return {"deleted": args.budget_id}

    return _run(args, act)


def _policies_set(args: argparse.Namespace) -> int:
    from thrifty.errors import UsageError
    from thrifty.spend import admin_ops

    scope, scope_id = _scope(args)
    try:
        rules = json.loads(args.rules)
    except ValueError as exc:
        raise UsageError(f"--rules is not valid JSON: {exc}") from None
    return _run(args, lambda db: admin_ops.set_policy(db, scope, scope_id, rules))


def _policies_list(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, admin_ops.list_policies)


def _policies_delete(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    scope, scope_id = _scope(args)

    def act(db: Any) -> Any:
        admin_ops.delete_policy(db, scope, scope_id)
        return {"deleted": f"{scope}/{scope_id}"}

    return _run(args, act)


def _spend(args: argparse.Namespace) -> int:
    from thrifty.spend import admin_ops

    return _run(args, lambda db: admin_ops.spend(db, admin_ops.SpendQuery(
        group_by=args.group_by, since=_time(args.since), until=_time(args.until), team_id=args.team,
        key_id=args.key, user_id=args.user)))


# --- registration -----------------------------------------------------------------


def _group(sub: Any, name: str, help_text: str) -> Any:
    parser = sub.add_parser(name, help=help_text, description=f"{help_text}. {_ADMIN_NOTE}")
    inner = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    parser.set_defaults(func=lambda args, p=parser: (p.print_help(), 2)[1])
    return inner


def _action(inner: Any, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    p = inner.add_parser(name, help=help_text, description=help_text)
    _common(p)
    p.set_defaults(func=func)
    return p


def _scope_flags(p: argparse.ArgumentParser, scopes: tuple[str, ...] = ("key", "user", "team")) -> None:
    for s in scopes:
        p.add_argument(f"--{s}", metavar="ID", help=f"the {s} it applies to")


def register(subparsers: Any) -> None:
    keys = _group(subparsers, "keys", "Create, list and revoke virtual API keys")
    p = _action(keys, "create", "Create a key (printed once)", _keys_create)
    p.add_argument("--name")
    p.add_argument("--team", metavar="ID")
    p.add_argument("--user", metavar="ID")
    p.add_argument("--tag", action="append", metavar="TAG", help="repeatable")
    p.add_argument("--metadata", metavar="JSON")
    p.add_argument("--expires", metavar="TIME", help="ISO 8601 UTC or unix seconds")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p = _action(keys, "list", "List keys", _keys_list)
    p.add_argument("--team", metavar="ID")
    p.add_argument("--user", metavar="ID")
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p = _action(keys, "revoke", "Revoke a key", _keys_revoke)
    p.add_argument("key_id")

    teams = _group(subparsers, "teams", "Create and list teams")
    p = _action(teams, "create", "Create a team", _teams_create)
    p.add_argument("team_id")
    p.add_argument("--name")
    p.add_argument("--rpm", type=int, help="requests per minute for the whole team")
    p.add_argument("--tpm", type=int, help="tokens per minute for the whole team")
    _action(teams, "list", "List teams", _teams_list)

    users = _group(subparsers, "users", "Create and list users")
    p = _action(users, "create", "Create a user", _users_create)
    p.add_argument("user_id")
    p.add_argument("--team", metavar="ID")
    p.add_argument("--name")
    p.add_argument("--email")
    p = _action(users, "list", "List users", _users_list)
    p.add_argument("--team", metavar="ID")

    budgets = _group(subparsers, "budgets", "Set, list and delete budgets")
    p = _action(budgets, "set", "Set the budget of a key, user or team", _budgets_set)
    _scope_flags(p)
    p.add_argument("--amount", required=True, metavar="USD", help="hard limit in USD, e.g. 50 or 12.5")
    p.add_argument("--period", default="monthly", choices=("daily", "weekly", "monthly", "window"))
    p.add_argument("--start", metavar="TIME", help="window start (period=window)")
    p.add_argument("--end", metavar="TIME", help="window end (period=window)")
    p.add_argument("--soft", type=float, action="append", metavar="FRACTION",
                   help="alert threshold, e.g. 0.8 (repeatable)")
    p.add_argument("--webhook", metavar="URL", help="POSTed a JSON alert when a soft threshold is crossed")
    _action(budgets, "list", "List budgets with their spend this period", _budgets_list)
    p = _action(budgets, "delete", "Delete a budget", _budgets_delete)
    p.add_argument("budget_id")

    policies = _group(subparsers, "policies", "Set, list and delete model policies of keys and teams")
    p = _action(policies, "set", "Set the policy of a key or team", _policies_set)
    _scope_flags(p, ("key", "team"))
    p.add_argument("--rules", required=True, metavar="JSON",
                   help='a JSON object of rules, e.g. \'{"deny_origin_countries": ["CN"], "max_usd_per_mtok": 5}\'')
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = POLICY_RULES_HELP
    _action(policies, "list", "List policies", _policies_list)
    p = _action(policies, "delete", "Delete the policy of a key or team", _policies_delete)
    _scope_flags(p, ("key", "team"))

    p = subparsers.add_parser("spend", help="Spend from the ledger", description=f"Spend from the ledger. {_ADMIN_NOTE}")
    _common(p)
    p.add_argument("--by", "--group-by", dest="group_by", default="team",
                   choices=("key", "user", "team", "model", "provider"),
                   help="group by (default: team; --group-by: deprecated spelling)")
    p.add_argument("--since", metavar="TIME")
    p.add_argument("--until", metavar="TIME")
    p.add_argument("--team", metavar="ID")
    p.add_argument("--key", metavar="ID")
    p.add_argument("--user", metavar="ID")
    p.set_defaults(func=_spend)
