"""The ``[router]`` and ``[judge]`` config sections, and per-model hints for learning.

::

    [router]
    learning = true              # learn from feedback and judge grades (false: the packaged router only)
    learning_scope = "deployment"  # or "team": each team learns on its own labels
    explore = true               # Thompson sampling + warm-up; false: always the best estimate
    explore_max_share = 0.1      # at most this share of decisions explore ...
    explore_max_spend_share = 0.1  # ... and their extra cost <= this share of the all-frontier cost
    warmup_labels = 30           # labels each model gets before warm-up stops trying it
    caution = 1.0                # standard deviations of the traffic's kept-minus-bar quality kept in hand
    caution_on = "traffic"       # or "models": each model's own bounds (the earlier rule; it saves later)
    explore_max_loss_share = 0.01  # exploration's estimated quality loss <= this share of the best's (0: no cap)
    price_prior = 0.05           # unrated models: prior quality + this x (log price, standardised)
    sync_s = 1.0                 # how often a replica loads labels other replicas stored
    seed = 7                     # optional: reproducible exploration draws (default: fresh each start)

    [judge]
    model = "gpt-4o-mini"        # any configured chat model; no [judge]: no judge
    sample = 0.05                # share of routed answers graded
    weight = 0.5                 # a grade counts as this many user ratings
    max_tokens = 16              # the judge's answer: one verdict line (docs/router.md, Judge)

    [models."my-model"]
    router_alias = "gpt-4o-mini"  # the name the packaged router knows this model by
    prior_quality = 0.8           # or tier = "frontier" | "strong" | "small"
    prior_strength = 4            # how many ratings that hint is worth
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrifty.errors import UsageError

# A tier hint as a prior quality: the share of benchmark prompts such models answer well,
# roughly (RouterBench: frontier ~0.85-0.9, mid-size open models ~0.7, 7B-13B ~0.6).
TIERS = {"frontier": 0.85, "strong": 0.75, "small": 0.6}
HINT_KEYS = ("router_alias", "prior_quality", "prior_strength", "tier")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    learning: bool = True
    learning_scope: str = "deployment"
    explore: bool = True
    explore_max_share: float = 0.1
    explore_max_spend_share: float = 0.1
    warmup_labels: int = 30
    caution: float = 1.0
    caution_on: str = "traffic"
    explore_max_loss_share: float = 0.01
    sync_s: float = 1.0
    kernel_width: float = 0.5
    local_strength: float = 4.0
    prior_strength: float = 2.0
    price_prior: float = 0.05  # prior quality per standard deviation of log price (unrated models)
    seed: int | None = None  # exploration's random draws (None: fresh each start); for reproducible runs


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    model: str
    sample: float = 0.05
    weight: float = 0.5
    max_tokens: int = 16


@dataclass(frozen=True, slots=True)
class ModelHint:
    """What an operator tells the router of a model it has not learnt yet."""

    alias: str | None = None
    prior_quality: float | None = None
    prior_strength: float = 4.0


def _number(section: str, doc: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise UsageError(f"{section}.{key} must be a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def _flag(section: str, doc: Mapping[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise UsageError(f"{section}.{key} must be true or false, got {value!r}")
    return value


def parse_router(doc: Mapping[str, Any]) -> RouterSettings:
    r = doc.get("router") or {}
    if not isinstance(r, Mapping):
        raise UsageError("[router] must be a table")
    known = set(RouterSettings.__dataclass_fields__)
    unknown = sorted(set(r) - known)
    if unknown:
        raise UsageError(f"router: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    d = RouterSettings()
    return RouterSettings(
        learning=_flag("router", r, "learning", d.learning),
        learning_scope=_choice("router", r, "learning_scope", d.learning_scope, ("deployment", "team")),
        explore=_flag("router", r, "explore", d.explore),
        explore_max_share=_number("router", r, "explore_max_share", d.explore_max_share, 0, 1),
        explore_max_spend_share=_number("router", r, "explore_max_spend_share", d.explore_max_spend_share, 0, 1),
        warmup_labels=int(_number("router", r, "warmup_labels", d.warmup_labels, 0, 10_000)),
        caution=_number("router", r, "caution", d.caution, 0, 10),
        caution_on=_choice("router", r, "caution_on", d.caution_on, ("traffic", "models")),
        explore_max_loss_share=_number("router", r, "explore_max_loss_share", d.explore_max_loss_share, 0, 1),
        sync_s=_number("router", r, "sync_s", d.sync_s, 0, 3600),
        kernel_width=_number("router", r, "kernel_width", d.kernel_width, 1e-3, 10),
        local_strength=_number("router", r, "local_strength", d.local_strength, 0.1, 1e6),
        prior_strength=_number("router", r, "prior_strength", d.prior_strength, 0.1, 1e6),
        price_prior=_number("router", r, "price_prior", d.price_prior, 0, 1),
        seed=_seed(r.get("seed")),
    )


def _choice(section: str, doc: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = doc.get(key, default)
    if value not in allowed:
        raise UsageError(f"{section}.{key} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"router.seed must be a non-negative integer, got {value!r}")
    return value


def parse_judge(doc: Mapping[str, Any], models: Mapping[str, Any]) -> JudgeSettings | None:
    j = doc.get("judge")
    if j is None:
        return None
    if not isinstance(j, Mapping):
        raise UsageError("[judge] must be a table")
    unknown = sorted(set(j) - set(JudgeSettings.__dataclass_fields__))
    if unknown:
        raise UsageError(f"judge: unknown setting(s) {', '.join(unknown)}")
    model = j.get("model")
    if not isinstance(model, str) or model not in models:
        raise UsageError(f"judge.model must name a configured model, got {model!r}")
    if getattr(models[model], "mode", "chat") != "chat":
        raise UsageError(f"judge.model must be a chat model; {model!r} is not")
    d = JudgeSettings(model)
    return JudgeSettings(
        model,
        sample=_number("judge", j, "sample", d.sample, 0, 1),
        weight=_number("judge", j, "weight", d.weight, 0.01, 100),
        max_tokens=int(_number("judge", j, "max_tokens", d.max_tokens, 1, 4096)),
    )


def pop_hint(name: str, m: dict[str, Any]) -> ModelHint | None:
    """Take the learning hints out of a ``[models.x]`` table (the rest are catalog facts)."""
    if not any(k in m for k in HINT_KEYS):
        return None
    alias = m.pop("router_alias", None)
    if alias is not None and not isinstance(alias, str):
        raise UsageError(f"models.{name!r}.router_alias must be a model name")
    tier = m.pop("tier", None)
    quality = m.pop("prior_quality", None)
    strength = m.pop("prior_strength", 4.0)
    section = f"models.{name!r}"
    if tier is not None:
        if tier not in TIERS:
            raise UsageError(f"{section}.tier must be one of {', '.join(TIERS)}, got {tier!r}")
        if quality is None:
            quality = TIERS[tier]
    if quality is not None:
        quality = _number(section, {"prior_quality": quality}, "prior_quality", 0.5, 0, 1)
    strength = _number(section, {"prior_strength": strength}, "prior_strength", 4.0, 0.1, 1e6)
    return ModelHint(alias, quality, strength)
