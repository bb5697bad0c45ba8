"""An in-memory copy of keys, teams, budgets and policies, so the hot path never reads the DB.

Rebuilt whenever the database's config version changes (checked in the
background about once a second, and at once after a change made through this
process's admin API).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from thrifty.jsonlimits import readable
from thrifty.spend.contract import Principal
from thrifty.spend.db import Database
from thrifty.spend.policy import Policy
from thrifty.spend.schema import config_version


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: str
    key_hash: str
    principal: Principal
    expires_at: float | None
    revoked: bool
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True, slots=True)
class BudgetEntry:
    id: str
    scope: str
    scope_id: str
    limit_nanos: int
    period: str
    window_start: float | None
    window_end: float | None
    soft_thresholds: tuple[float, ...]
    webhook_url: str | None

    def label(self) -> str:
        kind = "fixed-window" if self.period == "window" else self.period
        return f"{self.scope} {self.scope_id!r} {kind} budget"


@dataclass(slots=True)
class Snapshot:
    version: int = 0
    keys: dict[str, KeyEntry] = field(default_factory=dict)  # by key hash
    keys_by_id: dict[str, KeyEntry] = field(default_factory=dict)
    team_limits: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # rpm, tpm
    budgets: dict[tuple[str, str], list[BudgetEntry]] = field(default_factory=dict)  # (scope, id)
    budgets_by_id: dict[str, BudgetEntry] = field(default_factory=dict)
    policies: dict[tuple[str, str], Policy] = field(default_factory=dict)

    def budgets_for(self, principal: Principal) -> list[BudgetEntry]:
        out: list[BudgetEntry] = []
        for scope, ident in (("key", principal.key_id), ("user", principal.user_id), ("team", principal.team_id)):
            if ident is not None:
                out.extend(self.budgets.get((scope, ident), ()))
        return out

    def policies_for(self, principal: Principal) -> list[Policy]:
        out = []
        for scope, ident in (("key", principal.key_id), ("team", principal.team_id)):
            if ident is not None and (scope, ident) in self.policies:
                out.append(self.policies[(scope, ident)])
        return out


def load_snapshot(db: Database) -> Snapshot:
    snap = Snapshot(version=config_version(db))
    for key_id, scope_id, rules in db.all("SELECT scope, scope_id, rules FROM policies"):
        snap.policies[(key_id, scope_id)] = Policy.from_rules(readable(json.loads(rules)))
    for team_id, rpm, tpm in db.all("SELECT id, rpm, tpm FROM teams"):
        snap.team_limits[team_id] = (rpm, tpm)
    for row in db.all(
        "SELECT id, key_hash, user_id, team_id, tags, metadata, rpm, tpm, is_admin, expires_at, revoked_at"
        " FROM api_keys"
    ):
        key_id, key_hash, user_id, team_id, tags, metadata, rpm, tpm, is_admin, expires_at, revoked_at = row
        profile = None
        for scope, ident in (("key", key_id), ("team", team_id)):
            policy = snap.policies.get((scope, ident)) if ident else None
            if policy is not None and policy.routing_profile and profile is None:
                profile = policy.routing_profile
        principal = Principal(
            # hardening: rows stored before input was checked may hold lone surrogates, which
            # the ledger could not write: read them as U+FFFD.
            key_id=key_id, user_id=user_id, team_id=team_id, tags=tuple(readable(json.loads(tags))),
            metadata=readable(json.loads(metadata)), routing_profile=profile, is_admin=bool(is_admin),
        )
        entry = KeyEntry(key_id, key_hash, principal, expires_at, revoked_at is not None, rpm, tpm)
        snap.keys[key_hash] = snap.keys_by_id[key_id] = entry
    for row in db.all(
        "SELECT id, scope, scope_id, limit_nanos, period, window_start, window_end, soft_thresholds, webhook_url"
        " FROM budgets ORDER BY id"
    ):
        entry = BudgetEntry(row[0], row[1], row[2], int(row[3]), row[4], row[5], row[6],
                            tuple(json.loads(row[7])), row[8])
        snap.budgets.setdefault((entry.scope, entry.scope_id), []).append(entry)
        snap.budgets_by_id[entry.id] = entry
    return snap
