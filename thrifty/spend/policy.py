"""Which models a key or team may reach.

A policy is a set of rules; a model must pass every rule of every policy that
applies (the key's and its team's). Rules about facts the catalog does not
know fail closed: a model with no known origin country is denied by any
origin rule, one with no known hosting region by any region rule, an unpriced
model by a price ceiling. Model patterns are shell-style globs (``gpt-4o*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from thrifty.catalog.model import ModelInfo

RULE_FIELDS = (
    "allow_models",
    "deny_models",
    "allow_providers",
    "deny_providers",
    "allow_origin_countries",
    "deny_origin_countries",
    "allow_regions",
    "deny_regions",
    "max_usd_per_mtok",
    "routing_profile",
)


def _strings(name: str, value: Any, *, upper: bool = False, lower: bool = False) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"policy field {name!r} must be a list of strings")
    out = tuple(v.strip() for v in value)
    if upper:
        out = tuple(v.upper() for v in out)
    if lower:
        out = tuple(v.lower() for v in out)
    return out


@dataclass(frozen=True, slots=True)
class Policy:
    allow_models: tuple[str, ...] | None = None
    deny_models: tuple[str, ...] | None = None
    allow_providers: tuple[str, ...] | None = None
    deny_providers: tuple[str, ...] | None = None
    allow_origin_countries: tuple[str, ...] | None = None  # ISO 3166 alpha-2
    deny_origin_countries: tuple[str, ...] | None = None
    allow_regions: tuple[str, ...] | None = None  # every hosting region must be allowed
    deny_regions: tuple[str, ...] | None = None  # no hosting region may be denied
    max_usd_per_mtok: float | None = None  # ceiling on both input and output price
    routing_profile: str | None = None

    @classmethod
    def from_rules(cls, rules: Mapping[str, Any]) -> Policy:
        """Validate a JSON rules object (unknown fields are an error, not ignored)."""
        if not isinstance(rules, Mapping):
            raise ValueError("policy rules must be a JSON object")  # noqa: TRY004 (callers catch ValueError as invalid rules)
        unknown = sorted(set(rules) - set(RULE_FIELDS))
        if unknown:
            raise ValueError(f"unknown policy field(s): {', '.join(unknown)}; known: {', '.join(RULE_FIELDS)}")
        price = rules.get("max_usd_per_mtok")
        if price is not None:
            if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
                raise ValueError("policy field 'max_usd_per_mtok' must be a non-negative number")
            price = float(price)
        profile = rules.get("routing_profile")
        if profile is not None and not isinstance(profile, str):
            raise ValueError("policy field 'routing_profile' must be a string")
        return cls(
            allow_models=_strings("allow_models", rules.get("allow_models")),
            deny_models=_strings("deny_models", rules.get("deny_models")),
            allow_providers=_strings("allow_providers", rules.get("allow_providers"), lower=True),
            deny_providers=_strings("deny_providers", rules.get("deny_providers"), lower=True),
            allow_origin_countries=_strings("allow_origin_countries", rules.get("allow_origin_countries"), upper=True),
            deny_origin_countries=_strings("deny_origin_countries", rules.get("deny_origin_countries"), upper=True),
            allow_regions=_strings("allow_regions", rules.get("allow_regions"), lower=True),
            deny_regions=_strings("deny_regions", rules.get("deny_regions"), lower=True),
            max_usd_per_mtok=price,
            routing_profile=profile,
        )

    def to_rules(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in RULE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def denial(self, model: ModelInfo) -> str | None:
        """Why this policy denies the model, or ``None`` when it permits it."""
        names = (model.name,) + ((model.upstream_model,) if model.upstream_model else ())
        if self.allow_models is not None and not any(
            fnmatchcase(n, p) for n in names for p in self.allow_models
        ):
            return "model not in allow_models"
        if self.deny_models and any(fnmatchcase(n, p) for n in names for p in self.deny_models):
            return "model in deny_models"
        provider = model.provider.lower()
        if self.allow_providers is not None and provider not in self.allow_providers:
            return "provider not in allow_providers"
        if self.deny_providers and provider in self.deny_providers:
            return "provider in deny_providers"
        country = (model.origin_country or "").upper()
        if self.allow_origin_countries is not None and country not in self.allow_origin_countries:
            return "origin country not allowed" if country else "origin country unknown"
        if self.deny_origin_countries:
            if not country:
                return "origin country unknown"
            if country in self.deny_origin_countries:
                return "origin country denied"
        regions = tuple(r.lower() for r in model.regions)
        if self.allow_regions is not None and (
            not regions or any(r not in self.allow_regions for r in regions)
        ):
            return "hosting region not allowed" if regions else "hosting region unknown"
        if self.deny_regions:
            if not regions:
                return "hosting region unknown"
            if any(r in self.deny_regions for r in regions):
                return "hosting region denied"
        if self.max_usd_per_mtok is not None:
            if not model.priced:
                return "price unknown"
            ceiling = Decimal(repr(self.max_usd_per_mtok))
            if any(
                Decimal(repr(price)) * 1_000_000 > ceiling
                for price in (model.input_cost_per_token, model.output_cost_per_token)
            ):
                return "price above max_usd_per_mtok"
        return None


def filter_models(policies: Iterable[Policy], candidates: Iterable[ModelInfo]) -> tuple[list[ModelInfo], dict[str, str]]:
    """(models every policy permits, {denied model name: reason})."""
    policies = tuple(policies)
    kept: list[ModelInfo] = []
    denied: dict[str, str] = {}
    for model in candidates:
        for policy in policies:
            reason = policy.denial(model)
            if reason is not None:
                denied[model.name] = reason
                break
        else:
            kept.append(model)
    return kept, denied
