"""Dashboard administration: create teams and keys, set budgets, revoke keys, delete budgets.

Every action goes through :mod:`thrifty.spend.admin_ops`, the functions behind the admin API, so the
checks and error messages are the same. Forms are CSRF-safe twice over: the session cookie is
``SameSite=Strict`` (a cross-site form post carries no session), and every form carries a token
bound to the session (HMAC of the session token under the dashboard secret), checked on POST,
together with the ``Origin`` header when the browser sends one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from thrifty.spend import admin_ops

CSRF_FIELD = "csrf"


class ActionError(ValueError):
    """A refused action: the message is the store's (the admin API's) own."""


def csrf_token(secret: bytes, session_token: str) -> str:
    return hmac.new(secret, b"csrf:" + session_token.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, session_token: str | None, form: Mapping[str, str], origin: str | None,
            host: str | None) -> bool:
    if not session_token:
        return False
    if origin and origin != "null" and urlsplit(origin).netloc != (host or ""):
        return False
    return hmac.compare_digest(form.get(CSRF_FIELD, ""), csrf_token(secret, session_token))


def _opt(form: Mapping[str, str], name: str) -> str | None:
    value = (form.get(name) or "").strip()
    return value or None


def _int(form: Mapping[str, str], name: str) -> int | None:
    value = _opt(form, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ActionError(f"{name} must be a whole number, not {value!r}") from None


def perform(db: Any, action: str, form: Mapping[str, str], target: str | None = None) -> tuple[str, str | None]:
    """Run ``action``; returns (what was done, a secret to show once or None)."""
    try:
        if action == "team":
            team = admin_ops.create_team(db, form.get("team_id", "").strip(), name=_opt(form, "name"),
                                     rpm=_int(form, "rpm"), tpm=_int(form, "tpm"))
            return f"Created team {team['id']}.", None
        if action == "key":
            record, secret = admin_ops.create_key(db, name=_opt(form, "name"), team_id=_opt(form, "team_id"),
                                              user_id=_opt(form, "user_id"), rpm=_int(form, "rpm"),
                                              tpm=_int(form, "tpm"))
            return f"Created key {record['id']}; it is shown only this once, store it now.", secret
        if action == "revoke" and target:
            admin_ops.revoke_key(db, target)
            return f"Revoked key {target}.", None
        if action == "budget":
            soft = [float(x) for x in (form.get("soft") or "").replace(",", " ").split()]
            budget = admin_ops.set_budget(db, form.get("scope", "team"), form.get("scope_id", "").strip(),
                                      amount_usd=(form.get("amount_usd") or "").strip(),
                                      period=form.get("period", "monthly"), soft_thresholds=soft,
                                      webhook_url=_opt(form, "webhook_url"))
            return f"Set budget {budget['id']}.", None
        if action == "delete-budget" and target:
            admin_ops.delete_budget(db, target)
            return f"Deleted budget {target}.", None
    except admin_ops.AdminError as exc:
        raise ActionError(str(exc)) from None
    except ValueError as exc:  # e.g. a soft threshold that is not a number
        raise ActionError(str(exc)) from None
    raise ActionError(f"unknown action {action!r}")
