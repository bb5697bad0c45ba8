"""Virtual API keys: generated with 256 bits of entropy, stored only as a SHA-256 hash.

A fast unsalted hash is enough for keys this random (nothing to brute-force),
and it lets a lookup by hash replace a scan. The final comparison uses
:func:`hmac.compare_digest`. Only ``prefix`` (the first characters, for people
to tell keys apart) is ever shown again or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-thr-"
ADMIN_PREFIX = "sk-thr-admin-"


def generate_key(admin: bool = False) -> str:
    """A new secret key; shown to its owner once, never stored."""
    return (ADMIN_PREFIX if admin else KEY_PREFIX) + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show: enough to recognise it, useless to an attacker."""
    return key[: len(KEY_PREFIX) + 4] + "..."


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer ...`` or raw ``x-api-key`` value."""
    if not authorization:
        return None
    value = authorization.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        value = rest.strip()
    return value or None
