"""What-if replay: re-run routing on past traffic under another profile, knob, price list or policy.

No provider is called. Each request to re-route is an :class:`Item`: the
router's per-model scores (stored in the ledger, or computed here for a JSONL
of prompts), the gateway's prompt-size estimate, and whatever is known about
each model's actual usage and quality (benchmark replay data records both for
every model; the ledger knows the served model's tokens and, with feedback,
its quality).

The choice repeats the gateway's own rule exactly (``thrifty/pipeline/planner.py``
``_plan_auto``): candidates are the routable, priced chat models the router
knows that fit the prompt and pass policy, in the router's model order; the
expected cost of each is ``estimated prompt tokens x input price + expected
output tokens x output price``; ``router.choose`` picks. The cost of the choice
is priced by spend control's own :func:`thrifty.spend.pricing.cost_nanos`, so a
simulation on replay data agrees with a live run through the gateway to the
nano-dollar (tests/reports/test_simulate_live.py checks it to the cent).

Where the chosen model's real token counts are unknown (ledger records routed
elsewhere), the served call's token counts are priced at the chosen model's
prices: an estimate, and said so in the output (``exact_cost_share``).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.catalog.model import ModelInfo
from thrifty.errors import UsageError
from thrifty.spend.pricing import UnpricedModel, cost_nanos

AS_SERVED = "as served"


@dataclass
class Item:
    """One request to re-route."""

    scores: dict[str, float]
    est_prompt_tokens: int  # the gateway's estimate, used for the expected-cost comparison
    expected_output: int  # max_tokens, else the config's expected_output_tokens
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> real (prompt, completion) tokens
    labels: dict[str, float] = field(default_factory=dict)  # model -> quality in [0, 1]
    served: str | None = None
    served_usage: tuple[int, int, int] | None = None  # (prompt, completion, cached) of the served call
    served_cost_nanos: int | None = None


@dataclass(frozen=True)
class Scenario:
    """A way to route: a router profile, or one fixed model (``fixed``), or what was served."""

    name: str
    profile: Any | None = None  # thrifty.router.Profile
    fixed: str | None = None


@dataclass
class Outcome:
    scenario: str
    requests: int
    cost_nanos: int
    cost_ci: tuple[int, int]
    exact_cost_share: float  # share of requests whose cost uses the chosen model's real token counts
    quality: float | None  # mean label over the requests whose chosen model has a label
    quality_ci: tuple[float, float] | None
    labelled: int
    predicted_quality: float | None  # mean router score of the chosen models
    shares: dict[str, float]
    choices: list[str | None] = field(default_factory=list, repr=False)
    costs: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        from thrifty.spend.money import nanos_to_usd

        return {
            "scenario": self.scenario, "requests": self.requests, "cost_nanos": self.cost_nanos,
            "cost_usd": f"{nanos_to_usd(self.cost_nanos):f}",
            "cost_ci_usd": [f"{nanos_to_usd(v):f}" for v in self.cost_ci],
            "exact_cost_share": self.exact_cost_share, "quality": self.quality,
            "quality_ci": list(self.quality_ci) if self.quality_ci else None, "labelled": self.labelled,
            "predicted_quality": self.predicted_quality, "shares": self.shares,
        }


class Pool:
    """The models ``auto`` may choose among: the gateway's rule, with optional price and policy overrides."""

    def __init__(self, models: Mapping[str, Any], router_models: Sequence[str], *,
                 prices: Mapping[str, Mapping[str, float]] | None = None, policy: Mapping[str, Any] | None = None,
                 expected_output_tokens: int = 256) -> None:
        known = set(router_models)
        infos: dict[str, ModelInfo] = {}
        self.all_infos: dict[str, ModelInfo] = {}
        for mc in models.values():
            info = mc.info
            if prices and info.name in prices:
                info = _reprice(info, prices[info.name])
            self.all_infos[info.name] = info
            if mc.route and mc.mode == "chat" and info.priced and (not known or info.name in known):
                infos[info.name] = info
        unknown = sorted(set(prices or {}) - set(self.all_infos))
        if unknown:
            raise UsageError(f"price list names model(s) this gateway does not serve: {', '.join(unknown)}")
        if policy:
            from thrifty.spend.policy import Policy, filter_models

            try:
                rules = Policy.from_rules(policy)
            except ValueError as exc:
                raise UsageError(f"policy: {exc}") from None
            kept, _denied = filter_models([rules], infos.values())
            infos = {m.name: m for m in kept}
        if not infos:
            raise UsageError("no routable model is left (check the price list and policy)")
        self.infos = infos
        self.router_models = list(router_models)
        self.expected_output_tokens = expected_output_tokens

    def candidates(self, item: Item) -> list[ModelInfo]:
        """In the router's model order, as the gateway passes them to ``router.choose``."""
        out = []
        for name in self.router_models:
            info = self.infos.get(name)
            if info is not None and name in item.scores and (info.context_window or 1 << 62) >= item.est_prompt_tokens:
                out.append(info)
        return out


def _reprice(info: ModelInfo, p: Mapping[str, float]) -> ModelInfo:
    allowed = {"input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
               "cache_creation_input_token_cost"}
    bad = sorted(set(p) - allowed)
    if bad:
        raise UsageError(f"price list for {info.name!r}: unknown field(s) {', '.join(bad)}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    for k, v in p.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise UsageError(f"price list for {info.name!r}: {k} must be a non-negative number of USD per token")
    return replace(info, tiers=(), **{k: float(v) for k, v in p.items()})


def _nanos(info: ModelInfo, prompt: int, completion: int, cached: int = 0) -> int:
    try:
        return cost_nanos(info, prompt, completion, min(cached, prompt))
    except UnpricedModel:
        return 0


def choose(router: Any, pool: Pool, item: Item, profile: Any) -> str | None:
    """The model the gateway would pick for ``item`` under ``profile``."""
    cands = pool.candidates(item)
    if not cands:
        return None
    out_tokens = item.expected_output
    costs = {m.name: item.est_prompt_tokens * m.input_cost_per_token + out_tokens * m.output_cost_per_token
             for m in cands}
    model, _reason = router.choose({k: item.scores[k] for k in costs}, costs, profile)
    return model


def _cost(pool: Pool, item: Item, model: str) -> tuple[int, bool]:
    """(cost of serving ``item`` with ``model``, whether it rests on that model's real token counts)."""
    info = pool.all_infos.get(model)
    if info is None:
        return 0, False
    if model in item.usage:
        pt, ct = item.usage[model]
        return _nanos(info, pt, ct), True
    if item.served == model and item.served_cost_nanos is not None:
        return item.served_cost_nanos, True
    if item.served_usage is not None:
        pt, ct, cached = item.served_usage
        return _nanos(info, pt, ct, cached), False
    return _nanos(info, item.est_prompt_tokens, item.expected_output), False


def bootstrap_ci(values: np.ndarray, stat: str = "sum", n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the sum or mean, resampling requests."""
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    samples = values[idx]
    stats = samples.sum(axis=1) if stat == "sum" else samples.mean(axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def run(router: Any, pool: Pool, items: Sequence[Item], scenarios: Iterable[Scenario], *,
        seed: int = 0) -> list[Outcome]:
    """Every scenario over every item; bootstrap CIs resample the same requests for each."""
    results = []
    for sc in scenarios:
        choices: list[str | None] = []
        costs: list[int] = []
        exact = 0
        labels: list[float] = []
        predicted: list[float] = []
        for item in items:
            if sc.fixed is not None:
                model = sc.fixed
            elif sc.profile is None:
                model = item.served
            else:
                model = choose(router, pool, item, sc.profile)
            choices.append(model)
            if model is None:
                costs.append(0)
                continue
            if sc.profile is None and sc.fixed is None and item.served_cost_nanos is not None:
                c, ok = item.served_cost_nanos, True
            else:
                c, ok = _cost(pool, item, model)
            costs.append(c)
            exact += ok
            if model in item.labels:
                labels.append(item.labels[model])
            if model in item.scores:
                predicted.append(item.scores[model])
        arr = np.array(costs, dtype=np.float64)
        lo, hi = bootstrap_ci(arr, "sum", seed=seed)
        lab = np.array(labels, dtype=np.float64)
        n = len(items)
        counts: dict[str, int] = {}
        for m in choices:
            counts[m or "(none)"] = counts.get(m or "(none)", 0) + 1
        results.append(Outcome(
            scenario=sc.name, requests=n, cost_nanos=int(sum(costs)), cost_ci=(int(round(lo)), int(round(hi))),  # noqa: RUF046 (numpy < 2 rounds to a float)
            exact_cost_share=exact / n if n else 0.0,
            quality=float(lab.mean()) if len(lab) else None,
            quality_ci=bootstrap_ci(lab, "mean", seed=seed) if len(lab) else None, labelled=len(lab),
            predicted_quality=float(np.mean(predicted)) if predicted else None,
            shares={k: v / n for k, v in sorted(counts.items(), key=lambda kv: -kv[1])},
            choices=choices, costs=costs,
        ))
    return results


# --- where the items come from ------------------------------------------------------------


def items_from_ledger(db: Any, filters: Any, expected_output_tokens: int = 256) -> list[Item]:
    """Successful routed records with stored scores; feedback (if any) labels the served model."""
    rows = filters.rated_rows(
        db, "l.scores, l.served_model, l.prompt_tokens, l.completion_tokens, l.cached_tokens, l.cost_nanos, f.score",
        "l.scores IS NOT NULL AND l.status = 200")
    items = []
    for scores, served, pt, ct, cached, cost, fb in rows:
        try:
            parsed = json.loads(scores)
        except ValueError:
            continue
        if not isinstance(parsed, dict) or not parsed:
            continue
        items.append(Item(
            scores={str(k): float(v) for k, v in parsed.items()}, est_prompt_tokens=int(pt),
            expected_output=expected_output_tokens, labels={served: float(fb)} if fb is not None and served else {},
            served=served, served_usage=(int(pt), int(ct), int(cached or 0)), served_cost_nanos=int(cost),
        ))
    return items


def _estimate(body: dict[str, Any]) -> tuple[str, int, int | None]:
    """(prompt the router scores, the gateway's prompt-token estimate, max_tokens) for a request body."""
    from thrifty.errors import GatewayError
    from thrifty.pipeline.schemas import ChatRequest

    try:
        req = ChatRequest({"model": "auto", **body})
    except GatewayError as exc:
        raise UsageError(str(getattr(exc, "message", exc))) from None
    return req.prompt, req.prompt_tokens, req.max_tokens


def items_from_jsonl(path: Path, router: Any, expected_output_tokens: int = 256) -> list[Item]:
    """Lines of ``{"prompt": ...}`` or ``{"messages": [...]}``, optionally with ``labels``
    (model -> quality in [0, 1]) and ``usage`` (model -> {prompt_tokens, completion_tokens})."""
    opener = gzip.open if str(path).endswith(".gz") else open
    items = []
    try:
        with opener(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise UsageError(f"{path}:{n}: not a JSON object") from None
                if not isinstance(doc, dict) or not (isinstance(doc.get("prompt"), str) or "messages" in doc):
                    raise UsageError(f"{path}:{n}: each line needs 'prompt' (a string) or 'messages'")
                body = {"messages": doc["messages"]} if "messages" in doc else {
                    "messages": [{"role": "user", "content": doc["prompt"]}]}
                if "max_tokens" in doc:
                    body["max_tokens"] = doc["max_tokens"]
                try:
                    prompt, est, max_tokens = _estimate(body)
                except UsageError as exc:
                    raise UsageError(f"{path}:{n}: {exc}") from None
                labels = doc.get("labels") or {}
                usage = doc.get("usage") or {}
                if not isinstance(labels, dict) or not isinstance(usage, dict):
                    raise UsageError(f"{path}:{n}: 'labels' and 'usage' must be objects keyed by model")
                try:
                    items.append(Item(
                        scores=router.score(prompt), est_prompt_tokens=est,
                        expected_output=max_tokens or expected_output_tokens,
                        labels={k: float(v) for k, v in labels.items() if v is not None},
                        usage={k: (int(v["prompt_tokens"]), int(v["completion_tokens"])) for k, v in usage.items()},
                    ))
                except (KeyError, TypeError, ValueError) as exc:
                    raise UsageError(f"{path}:{n}: bad labels/usage ({exc})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return items


def items_from_replay(router: Any, records: Iterable[Any], expected_output_tokens: int = 256,
                      limit: int | None = None) -> list[Item]:
    """Benchmark replay records (thrifty.providers.replay_records.Record): every model's real
    tokens and correctness are known, so cost and quality are exact for any choice."""
    by_prompt: dict[str, list[Any]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt.strip(), []).append(r)
    items = []
    for recs in by_prompt.values():
        if limit is not None and len(items) >= limit:
            break
        prompt, est, _ = _estimate({"messages": [{"role": "user", "content": recs[0].prompt}]})
        items.append(Item(
            scores=router.score(prompt), est_prompt_tokens=est, expected_output=expected_output_tokens,
            usage={r.model: (r.prompt_tokens, r.completion_tokens) for r in recs},
            labels={r.model: float(r.correct) for r in recs if r.correct is not None},
        ))
    return items


def default_scenarios(router_profiles: Mapping[str, Any]) -> list[str]:
    return [p for p in ("auto-cheap", "auto", "auto-best") if p in router_profiles]


def ci_text(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]" if not (math.isnan(lo) or math.isnan(hi)) else "-"
