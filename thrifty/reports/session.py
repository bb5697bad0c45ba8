"""Signed session cookies for the dashboard (HMAC-SHA256, stdlib only).

The signing secret lives in the spend database (``report_state``), so every
gateway sharing that database accepts the same sessions; deleting the row
logs everyone out. A session names the admin key that opened it and expires
after ``SESSION_SECONDS``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from thrifty.reports.tables import ensure_tables, get_state, set_state

COOKIE = "thrifty_ui"
SESSION_SECONDS = 12 * 3600
_SECRET = "ui_session_secret"


def load_secret(db: Any) -> bytes:
    ensure_tables(db)
    value = get_state(db, _SECRET)
    if value is None:
        db.execute("INSERT INTO report_state (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                   (_SECRET, secrets.token_hex(32)))
        value = get_state(db, _SECRET)
    return bytes.fromhex(value or "")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret: bytes, key_id: str | None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    payload = _b64(json.dumps({"kid": key_id, "exp": int(now + SESSION_SECONDS)}, separators=(",", ":")).encode())
    mac = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def verify(secret: bytes, token: str | None, now: float | None = None) -> dict | None:
    """The session's payload, or None when the token is missing, forged or expired."""
    if not token or token.count(".") != 1:
        return None
    payload, mac = token.split(".")
    good = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac, good):
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("exp", 0) < (time.time() if now is None else now):
        return None
    return doc


__all__ = ["COOKIE", "SESSION_SECONDS", "load_secret", "set_state", "sign", "verify"]
