"""Routing on what this deployment has learnt: estimates, the calibrated knob, exploration.

:class:`Learner` is what the gateway's ``auto`` asks for a decision and what feedback and the
judge give labels to. It keeps one :class:`~thrifty.router.online.LabelSet` per learning scope
(the whole deployment, or each team when ``[router] learning_scope = "team"``), the recent
decisions that calibrate each profile's weight, and the exploration budget. It holds no
connection: :mod:`thrifty.router.labels` loads and saves labels in the spend database.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from thrifty.router.online import Label, LabelSet
from thrifty.router.policy import (
    Calibrated,
    ExplorationBudget,
    decide,
    decide_target,
    weight_keeping,
)

RECENT = 128  # decisions remembered per scope to calibrate a profile's weight
RECALIBRATE_EVERY = 16
# Warm-up: until a candidate has ``warmup`` labels (or was tried WARMUP_TRIES times as often,
# for deployments that rate few answers), this share of decisions tries one such model, drawn
# uniformly: a model sampled only by chance can stay unknown for thousands of requests when
# it is dear, and it may be the one that sets the bar.
WARMUP_SHARE = 0.5
WARMUP_TRIES = 5


@dataclass(frozen=True)
class Knob:
    """A profile as the learner applies it: keep a share of the best quality (``keep``), a fixed
    cost ``weight``, or the cheapest model reaching ``target`` quality."""

    keep: float | None = None
    weight: float | None = None
    target: float | None = None


AUTO = Knob(keep=0.98)
AUTO_CHEAP = Knob(keep=0.93)
AUTO_BEST = Knob(weight=0.0)


@dataclass(frozen=True, slots=True)
class RouteTrace:
    """What a learned decision leaves on its request, for the ledger and for learning later:
    the prompt's context (:func:`thrifty.router.online.encode_context`), the probability the
    model was chosen with, and whether the choice explored."""

    context: str | None
    propensity: float
    explored: bool


@dataclass(frozen=True)
class Choice:
    model: str
    propensity: float
    explored: bool
    weight: float
    means: dict[str, float]
    labels: dict[str, float]
    extra_cost: float  # exploration's extra expected cost over the greedy choice (USD)


@dataclass
class _Recent:
    """The last decisions' estimated quality and expected cost per model (NaN: not a candidate),
    and the weights calibrated on them: on the estimates (``greedy``) and on one draw of each
    model's overall level from its posterior (``sampled``: Thompson sampling of the knob itself,
    so a model nobody has tried may be the one that sets the bar, and gets tried)."""

    columns: dict[str, int] = field(default_factory=dict)
    means: np.ndarray = field(default_factory=lambda: np.full((RECENT, 0), np.nan))
    lower: np.ndarray = field(default_factory=lambda: np.full((RECENT, 0), np.nan))
    upper: np.ndarray = field(default_factory=lambda: np.full((RECENT, 0), np.nan))
    costs: np.ndarray = field(default_factory=lambda: np.full((RECENT, 0), np.nan))
    rows: int = 0
    since: int = RECALIBRATE_EVERY
    weights: dict[float, tuple[Calibrated, Calibrated, dict[str, float]]] = field(default_factory=dict)

    def add(self, models: Sequence[str], means: np.ndarray, lower: np.ndarray, upper: np.ndarray,
            costs: np.ndarray) -> None:
        for m in models:
            if m not in self.columns:
                self.columns[m] = len(self.columns)
                empty = np.full((RECENT, 1), np.nan)
                self.means, self.lower, self.upper, self.costs = (
                    np.hstack([x, empty]) for x in (self.means, self.lower, self.upper, self.costs))
        r = self.rows % RECENT
        self.means[r], self.lower[r], self.upper[r], self.costs[r] = np.nan, np.nan, np.nan, np.nan
        cols = [self.columns[m] for m in models]
        self.means[r, cols], self.lower[r, cols], self.upper[r, cols], self.costs[r, cols] = means, lower, upper, costs
        self.rows += 1
        self.since += 1

    def calibrate(self, keep: float, labels: LabelSet, prior: dict[str, tuple[float, float]],
                  rng: np.random.Generator, on_traffic: bool = False
                  ) -> tuple[Calibrated, Calibrated, dict[str, float]]:
        """(greedy weight, sampled weight, sampled levels) for a profile keeping ``keep``.

        Every :data:`RECALIBRATE_EVERY` decisions, one draw of every model's overall level from
        its posterior (a "sampled world"), and the weights calibrated on the estimates and on
        that draw. Until the next draw, decisions that explore use the draw's levels and weight.
        """
        if self.since >= RECALIBRATE_EVERY:
            self.weights.clear()
            self.since = 0
        got = self.weights.get(keep)
        if got is None:
            n = min(self.rows, RECENT)
            means, lower, upper, costs = self.means[:n], self.lower[:n], self.upper[:n], self.costs[:n]
            names = list(self.columns)
            p = np.array([prior.get(m, (0.5, 2.0))[0] for m in names])
            k0 = np.array([prior.get(m, (0.5, 2.0))[1] for m in names])
            est = labels.estimate(None, names, p, k0)
            drawn = rng.beta(est.overall_a, est.overall_b)
            shift = drawn - est.overall_a / (est.overall_a + est.overall_b)
            if on_traffic:  # the caution on the traffic as a whole (policy._keeping_on_traffic)
                greedy = weight_keeping(means, costs, keep, spread=(upper - lower) / 2.0)
            else:  # per model: the choices at their lower bounds, the bar at the best's upper bound
                greedy = weight_keeping(means, costs, keep, lower, upper)
            sampled = weight_keeping(np.clip(means + shift, 0.0, 1.0), costs, keep)
            got = self.weights[keep] = (
                greedy,
                sampled,
                dict(zip(names, drawn.tolist())))
        return got


class Learner:
    """Thread-safe: decisions run on the event loop, labels may arrive from worker threads."""

    def __init__(self, *, explore_share: float = 0.1, explore_spend_share: float = 0.1, warmup: int = 30,
                 thompson: bool = True, caution: float = 1.0, seed: int | None = None,
                 label_set_options: dict | None = None, caution_on: str = "traffic",
                 explore_loss_share: float | None = 0.01) -> None:
        """The defaults are ``[router]``'s (thrifty/router/settings.py); ``thompson = False`` keeps
        the warm-up but decides every other time on the estimates (for experiments).

        ``caution_on`` is where ``caution`` applies for a profile keeping a share of the best
        quality: ``"models"``, each model's estimate (the choices at their lower bounds, the bar
        at the best's upper bound), or ``"traffic"``, the recent traffic's estimated quality as
        a whole (:func:`thrifty.router.policy.weight_keeping` with ``spread``; decisions then
        on the means). ``explore_loss_share`` caps exploration's estimated quality loss (the
        greedy choice's estimate minus the explored one's, a moving average) at that share of
        the best candidate's estimated quality; None: no such cap."""
        self._lock = threading.Lock()
        self._scopes: dict[str, LabelSet] = {}
        self._recent: dict[str, _Recent] = {}
        self._budgets: dict[str, ExplorationBudget] = {}
        self._prior: dict[str, tuple[float, float]] = {}  # each model's last prior (mean, strength)
        self._tries: dict[str, dict[str, int]] = {}  # per scope, model: decisions that chose it
        self.warmup = warmup
        self.thompson = thompson
        self.caution = caution
        if caution_on not in ("models", "traffic"):
            raise ValueError(f"caution_on must be 'models' or 'traffic', got {caution_on!r}")
        self.caution_on = caution_on
        self.explore_loss_share = explore_loss_share
        self._options = dict(label_set_options or {})
        self.explore_share, self.explore_spend_share = explore_share, explore_spend_share
        self.rng = np.random.default_rng(seed)

    def labels(self, scope: str) -> LabelSet:
        s = self._scopes.get(scope)
        if s is None:
            s = self._scopes[scope] = LabelSet(**self._options)
        return s

    def budget(self, scope: str) -> ExplorationBudget:
        b = self._budgets.get(scope)
        if b is None:
            b = self._budgets[scope] = ExplorationBudget(self.explore_share, self.explore_spend_share,
                                                                 max_loss_share=self.explore_loss_share)
        return b

    def add(self, scope: str, label: Label) -> None:
        with self._lock:
            self.labels(scope).add(label)

    def pool_level(self, scope: str) -> float:
        """The mean score over all labels of the scope, shrunk to 0.5: the uninformative prior."""
        s, n = self.labels(scope).mean_score()
        return (s + 1.0) / (n + 2.0)

    def choose(self, scope: str, context: np.ndarray | None, models: Sequence[str], prior: np.ndarray,
               prior_strength: np.ndarray, costs: np.ndarray, knob: Knob, explore: bool = True) -> Choice:
        """Decide among ``models`` (already filtered by policy and capabilities) for a prompt."""
        with self._lock:
            est = self.labels(scope).estimate(context, models, prior, prior_strength)
            means = est.mean
            sd = np.sqrt(means * (1.0 - means) / (est.a + est.b + 1.0))
            lower, upper = means - self.caution * sd, means + self.caution * sd
            recent = self._recent.setdefault(scope, _Recent())
            recent.add(models, means, lower, upper, costs)
            for m, p, k in zip(models, prior, prior_strength):
                self._prior[m] = (float(p), float(k))
            budget = self.budget(scope)
            explore = explore and budget.allows()
            optimistic = False
            if knob.target is not None:
                weight = 0.0
                d = decide_target(est.a, est.b, costs, knob.target, self.rng, explore)
            else:
                if knob.keep is not None:
                    greedy_cal, sampled_cal, levels = recent.calibrate(knob.keep, self.labels(scope), self._prior,
                                                                       self.rng, self.caution_on == "traffic")
                    optimistic = greedy_cal.optimistic
                    weight, sampled = greedy_cal.draw(self.rng), sampled_cal.draw(self.rng)
                    drawn = np.array([levels.get(m, np.nan) for m in models])
                    fresh = np.isnan(drawn)  # a model new since the draw: its own draw now
                    if fresh.any():
                        drawn[fresh] = self.rng.beta(est.overall_a[fresh], est.overall_b[fresh])
                    a, b = est.given_levels(drawn)
                    options, sampled_options = greedy_cal.options(), sampled_cal.options()
                else:
                    weight = sampled = knob.weight or 0.0
                    a, b = est.a, est.b
                    options = sampled_options = ()
                d = decide(est.a, est.b, costs, weight, self.rng, explore and self.thompson, sampled, (a, b),
                           lower=lower if self.caution_on == "models" else upper if optimistic else None,
                           weight_options=options, sampled_options=sampled_options)
            if explore and self.warmup > 0:
                tries = self._tries.setdefault(scope, {})
                under = np.flatnonzero([est.labels[i] < self.warmup and tries.get(m, 0) < WARMUP_TRIES * self.warmup
                                        for i, m in enumerate(models)])
                if under.size:
                    d = d.mixed_with_uniform(WARMUP_SHARE, under, len(models), self.rng)
                tries[models[d.index]] = tries.get(models[d.index], 0) + 1
            extra = budget.record(d, costs, means)
        return Choice(models[d.index], d.propensity, d.explored, weight,
                      {m: float(q) for m, q in zip(models, means)},
                      {m: float(n) for m, n in zip(models, est.labels)}, extra)


def price_prior(level: float, prices: np.ndarray, slope: float) -> np.ndarray:
    """Priors for models nobody has rated: the pool's level, tilted by price. Across models on
    the market, a dearer model is more often the better one; knowing nothing else, that is the
    safer bet for a quality bar (a cheap model must then earn its traffic with ratings, rather
    than a dear one having to be found by chance). ``slope`` is the quality per standard
    deviation of log price (0: flat)."""
    if slope <= 0 or len(prices) < 2:
        return np.full(len(prices), level)
    lp = np.log(np.maximum(prices, 1e-15))
    spread = float(lp.std())
    z = (lp - lp.mean()) / spread if spread > 0 else np.zeros_like(lp)
    return np.clip(level + slope * z, 0.02, 0.98)
