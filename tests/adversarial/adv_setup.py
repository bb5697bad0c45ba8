"""Setup shared by the adversarial tests (issue 11): real ``thrifty serve`` processes over the
counting fake upstream, configs written as TOML, teams, keys and budgets made in the database.

A module of its own (not conftest): several test folders have a conftest.py.
"""

from __future__ import annotations

import json
import pathlib
from decimal import Decimal
from typing import Any

from thrifty.spend import admin_ops
from thrifty.spend.db import Database
from thrifty.spend.schema import migrate
from thrifty.testing.loadtest import ADMIN_KEY, Gateway

__all__ = ["ADMIN_KEY", "Gateway", "make_keys", "served_usd", "write_toml"]

PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "context_window": 400_000,
         "max_output_tokens": 1000}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_toml(path: pathlib.Path, doc: dict[str, Any]) -> pathlib.Path:
    """``doc`` as TOML: scalars first, then ``[section]`` tables and ``[section."name"]`` ones."""
    lines = [f"{k} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, body in doc.items():
        if not isinstance(body, dict):
            continue
        flat = {k: v for k, v in body.items() if not isinstance(v, dict) or section in ("spend",)}
        nested = {k: v for k, v in body.items() if k not in flat}
        if flat or not nested:
            lines += ["", f"[{section}]"] + [f"{k} = {_value(v)}" for k, v in flat.items()]
        for name, table in nested.items():
            lines += ["", f"[{section}.{json.dumps(name)}]"] + [f"{k} = {_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_keys(db_url: str, teams: dict[str, str | None]) -> dict[str, str]:
    """A team and a key of it for each of ``teams`` (team -> daily budget in USD, or None):
    team -> the key's secret."""
    db = Database(db_url)
    migrate(db)
    keys = {}
    for team, budget in teams.items():
        admin_ops.create_team(db, team)
        _rec, keys[team] = admin_ops.create_key(db, team_id=team)
        if budget is not None:
            admin_ops.set_budget(db, "team", team, amount_usd=budget, period="daily")
    db.close()
    return keys


def served_usd(served: list[tuple[str, int, int]]) -> Decimal:
    """What the upstream billed for ``served`` answers, at :data:`PRICE` (exact decimals)."""
    inp, out = Decimal(repr(PRICE["input_cost_per_token"])), Decimal(repr(PRICE["output_cost_per_token"]))
    return sum((inp * p + out * c for _m, p, c in served), Decimal(0))
