"""Test support for a served gateway: ``running`` (thrifty/gateway/server.py) runs an app on
a real loopback server in a background thread, ``served_app`` builds the app as ``thrifty
serve`` does with a team, a budget and a key.

with running(app) as base_url:        # "http://127.0.0.1:<port>"
    openai.OpenAI(base_url=base_url + "/v1", api_key="x").chat.completions.create(...)
"""

from __future__ import annotations

from typing import Any

from thrifty.gateway.server import free_port, running

__all__ = ["free_port", "running", "served_app"]


def served_app(config: Any, team: str, *, budget_usd: str = "1000") -> tuple[Any, Any, str]:
    """The app as ``thrifty serve`` builds it from ``config`` (spend control, /admin and
    /v1/feedback), with ``team``, a monthly team budget of ``budget_usd`` and a key of the
    team: (app, spend, the key's secret)."""
    from thrifty.gateway.assemble import build_app
    from thrifty.spend import admin_ops

    app, spend = build_app(config)
    admin_ops.create_team(spend.db, team)
    _, key = admin_ops.create_key(spend.db, team_id=team)
    admin_ops.set_budget(spend.db, "team", team, amount_usd=budget_usd, period="monthly")
    spend.reload()
    return app, spend, key
