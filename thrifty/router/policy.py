"""The decision on learned estimates: one knob, exploration that pays for itself, logged odds.

A profile trades quality for cost with a weight ``lam``: the chosen model maximises
``quality - lam * cost / (the dearest candidate's cost)``. ``auto`` keeps about 98% of the best
candidate's quality: its weight is the largest that keeps the mean estimated quality of the
recent traffic's choices at 98% of the best single candidate's (:func:`weight_keeping`,
recalibrated as estimates move). ``auto-cheap`` keeps 93%, ``auto-best`` is weight 0.

Exploration is Thompson sampling: the decision is taken on one draw from each candidate's
posterior instead of its mean, so models are tried in proportion to the chance that they are
the right choice; a dear model must be *likely* good enough to beat the cost term, a cheap one
is tried on less. It is bounded (:class:`ExplorationBudget`: a cap on the share of decisions
and of expected spend that differ from the greedy choice; 0 turns it off) and always among the
candidates the planner passed in (policy, capabilities, context window and budgets are applied
before). Every decision carries the probability with which its model was chosen, estimated
from the draws, so other policies can be evaluated off-line (inverse propensity weighting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DRAWS = 32  # posterior draws per decision: the choice and its logged probability
TIE = 1e-6  # the least cost weight: between equal estimates, the cheaper model


@dataclass(frozen=True)
class Decision:
    index: int  # into the candidates
    propensity: float  # P(this candidate | the policy's state), in (0, 1]
    greedy: int  # the choice on posterior means
    explored: bool  # index != greedy
    probs: np.ndarray | None = None  # P(each candidate); None: the greedy choice for sure

    def mixed_with_uniform(self, share: float, among: np.ndarray, n: int, rng: np.random.Generator) -> Decision:
        """With probability ``share``, one of ``among`` (indices into the ``n`` candidates) drawn
        uniformly instead; the logged probability is the mixture's."""
        base = self.probs if self.probs is not None else np.eye(1, n, self.greedy)[0]
        probs = (1.0 - share) * base
        probs[among] += share / len(among)
        index = int(rng.choice(among)) if rng.random() < share else self.index
        return Decision(index, float(probs[index]), self.greedy, index != self.greedy, probs)


def beta_draws(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = DRAWS) -> np.ndarray:
    """``n`` draws per row from Beta(a, b), by its normal approximation (same mean and
    variance, clipped to [0, 1]): a fifth of the cost of exact Beta draws, and the posteriors
    the learner draws from hold a few pseudo-labels at least."""
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    return np.clip(mean[:, None] + sd[:, None] * rng.standard_normal((len(a), n)), 0.0, 1.0)


def relative_costs(costs: np.ndarray) -> np.ndarray:
    top = float(costs.max()) if costs.size else 0.0
    return costs / top if top > 0 else np.zeros_like(costs)


#: A weight and the probability it was drawn with: a profile's randomised weight (:class:`Calibrated`).
WeightOptions = tuple[tuple[float, float], ...]


def decide(a: np.ndarray, b: np.ndarray, costs: np.ndarray, weight: float, rng: np.random.Generator,
           explore: bool, sampled_weight: float | None = None,
           sampled: tuple[np.ndarray, np.ndarray] | None = None, lower: np.ndarray | None = None,
           weight_options: WeightOptions = (), sampled_options: WeightOptions = ()) -> Decision:
    """Choose among candidates with Beta(a, b) quality posteriors and expected ``costs``:
    greedily on the means with ``weight``, or, exploring, on draws from the posteriors
    ``sampled`` (default: ``a``, ``b``) with ``sampled_weight`` (default: ``weight``).

    When the weights were themselves drawn (``weight_options`` / ``sampled_options``: every
    weight they could have been, with its probability), the logged probability of the choice
    sums over those weights, so off-line estimates weigh it by what the policy really did."""
    rel = relative_costs(costs)
    mean = a / (a + b) if lower is None else lower
    greedy = int(np.argmax(mean - max(weight, TIE) * rel))
    if not explore or len(a) < 2:
        if len(weight_options) < 2:
            return Decision(greedy, 1.0, greedy, False)
        probs = np.zeros(len(a))
        for w, p in weight_options:
            probs[int(np.argmax(mean - max(w, TIE) * rel))] += p
        return Decision(greedy, float(probs[greedy]), greedy, False, probs)
    w = max(weight if sampled_weight is None else sampled_weight, TIE)
    sa, sb = sampled if sampled is not None else (a, b)
    draws = beta_draws(sa, sb, rng)
    picks = np.argmax(draws - w * rel[:, None], axis=0)
    probs = None
    if len(sampled_options) > 1:
        probs = sum(p * _shares(np.argmax(draws - max(x, TIE) * rel[:, None], axis=0), len(a))
                    for x, p in sampled_options)
    return _sampled(picks, len(a), greedy, rng, probs)


def decide_target(a: np.ndarray, b: np.ndarray, costs: np.ndarray, target: float, rng: np.random.Generator,
                  explore: bool) -> Decision:
    """The cheapest candidate whose quality reaches ``target`` (the best one when none does):
    on the means, or, exploring, on posterior draws."""

    def pick(q: np.ndarray) -> int:
        ok = np.flatnonzero(q >= target)
        return int(ok[np.argmin(costs[ok])]) if ok.size else int(np.argmax(q))

    greedy = pick(a / (a + b))
    if not explore or len(a) < 2:
        return Decision(greedy, 1.0, greedy, False)
    draws = beta_draws(a, b, rng)
    return _sampled(np.array([pick(draws[:, s]) for s in range(DRAWS)]), len(a), greedy, rng)


def _sampled(picks: np.ndarray, n: int, greedy: int, rng: np.random.Generator,
             probs: np.ndarray | None = None) -> Decision:
    """One of the draws' choices, at random, logged with ``probs`` (default: each candidate's
    share of the draws)."""
    index = int(picks[int(rng.integers(len(picks)))])
    probs = _shares(picks, n) if probs is None else probs
    return Decision(index, float(probs[index]), greedy, index != greedy, probs)


def _shares(picks: np.ndarray, n: int) -> np.ndarray:
    """Each candidate's share of the draws choosing it, smoothed away from 0 and 1."""
    return (np.bincount(picks, minlength=n) + 0.5 / n) / (len(picks) + 0.5)


_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 32)])


@dataclass(frozen=True)
class Calibrated:
    """A profile's weight on recent traffic: ``weight`` keeps the quality bar; with probability
    ``mix`` a decision uses ``cheaper`` instead, the next weight down the cost scale, which
    alone would break the bar. The mixture meets the bar exactly in expectation: the randomised
    solution of the constrained problem, where one weight alone either overshoots the bar
    (paying for quality nobody asked for) or breaks it."""

    weight: float
    cheaper: float
    mix: float
    optimistic: bool = False  # no weight keeps the bar: decide on upper bounds, weight 0 (on traffic)

    def draw(self, rng: np.random.Generator) -> float:
        return self.cheaper if self.mix > 0 and rng.random() < self.mix else self.weight

    def options(self) -> tuple[tuple[float, float], ...]:
        """Each weight a draw can give, with its probability."""
        return ((self.weight, 1.0 - self.mix), (self.cheaper, self.mix)) if self.mix > 0 else ((self.weight, 1.0),)


def weight_keeping(means: np.ndarray, costs: np.ndarray, keep: float, lower: np.ndarray | None = None,
                   upper: np.ndarray | None = None, spread: np.ndarray | None = None) -> Calibrated:
    """The weight whose choices keep ``keep`` of the best single candidate's mean estimated
    quality over the rows (recent requests: estimated quality and cost per candidate, NaN where
    a model was not a candidate) at the lowest cost, mixed with the next cheaper one.

    With ``lower`` and ``upper`` bounds, cautiously: what the choices keep is counted at their
    lower bounds and the bar is set by the best candidate's upper bound. Both bounds tighten
    with ratings, so the caution fades where the evidence is: a cheap model earns traffic by
    being rated, and a dear model rated unluckily early cannot lower the bar for good (the bar
    stays up until the dear model's own ratings, which its traffic then brings, settle it).

    Many weights make the same choices; of those reaching the lowest cost, the middle of their
    range: a decision boundary away from both a dearer choice set and one that breaks the
    quality bar, so that estimation noise moves it least.
    """
    if keep >= 1.0 or means.size == 0:
        return Calibrated(0.0, 0.0, 0.0)
    if spread is not None:
        return _keeping_on_traffic(means, costs, keep, spread)
    q = np.where(np.isnan(means), -np.inf, means)
    rel = np.where(np.isnan(costs), 0.0, costs)
    rel = rel / np.maximum(rel.max(axis=1, keepdims=True), 1e-300)
    hi = q if upper is None else np.where(np.isnan(upper), -np.inf, upper)
    col = np.nanmean(np.where(np.isinf(hi), np.nan, hi), axis=0)
    if np.all(np.isnan(col)):
        return Calibrated(0.0, 0.0, 0.0)
    best = int(np.nanargmax(col))
    # Rows where the best single model was not a candidate: that row's best candidate instead.
    ref_rows = np.where(np.isinf(hi[:, best]), hi.max(axis=1), hi[:, best])
    target = keep * float(ref_rows.mean())
    lo = q if lower is None else np.where(np.isnan(lower), -np.inf, lower)
    picks = np.argmax(lo[None, :, :] - _GRID[:, None, None] * rel[None, :, :], axis=2)
    kept = np.take_along_axis(np.broadcast_to(lo, (len(_GRID),) + q.shape), picks[:, :, None], axis=2)[:, :, 0]
    spent = np.take_along_axis(np.broadcast_to(rel, (len(_GRID),) + rel.shape), picks[:, :, None], axis=2)[:, :, 0]
    quality, cost = kept.mean(axis=1), spent.mean(axis=1)
    ok = np.flatnonzero(quality >= target - 1e-12)
    if not ok.size:
        return Calibrated(0.0, 0.0, 0.0)
    cheapest = ok[cost[ok] <= cost[ok].min() + 1e-12]
    weight = _middle(cheapest)
    nxt = int(cheapest.max()) + 1
    if nxt >= len(_GRID) or cost[nxt] >= cost[cheapest[0]] or quality[nxt] >= quality[cheapest[0]]:
        return Calibrated(weight, weight, 0.0)
    mix = (quality[cheapest[0]] - target) / (quality[cheapest[0]] - quality[nxt])
    # The cheaper set's own range of weights: its middle, as above.
    same = np.flatnonzero(np.isclose(cost, cost[nxt]) & np.isclose(quality, quality[nxt]))
    same = same[same >= nxt]
    return Calibrated(weight, _middle(same), float(np.clip(mix, 0.0, 1.0)))


def _keeping_on_traffic(means: np.ndarray, costs: np.ndarray, keep: float, spread: np.ndarray) -> Calibrated:
    """:func:`weight_keeping` with the caution on the recent traffic as a whole (``[router]``
    caution on traffic, the default): the choices' mean estimated quality must keep ``keep`` of
    the best single candidate's by a margin of the uncertainty of that difference.

    ``spread`` is each estimate's caution (``caution`` standard deviations, per row and model).
    The difference is a sum over models of their estimates, each with a coefficient per row (1
    where the model is chosen, minus ``keep`` where it sets the bar); one model's errors are
    taken as one across the rows (its estimates share its ratings), different models' as
    independent. So the best model compared with itself cancels: keeping traffic on the best
    needs no ratings, and a cheaper model earns a share as soon as the evidence allows that
    share, not only once its own lower bound passes the best's upper bound (which, for models
    within a few points of each other, takes thousands of ratings).

    The bar is set by the best model at its optimistic level (mean + spread), so a model rated
    unluckily early keeps the bar up until its own ratings settle it; when no weight keeps the
    bar, ``optimistic`` says to decide on the upper bounds (the traffic then goes where the bar
    may be, and its ratings settle it) rather than on the means.
    """
    q = np.where(np.isnan(means), -np.inf, means)
    rel = np.where(np.isnan(costs), 0.0, costs)
    rel = rel / np.maximum(rel.max(axis=1, keepdims=True), 1e-300)
    n, m = q.shape
    sp = np.where(np.isnan(spread), 0.0, spread)
    hi = q + sp
    col = np.nanmean(np.where(np.isinf(hi), np.nan, hi), axis=0)
    if np.all(np.isnan(col)):
        return Calibrated(0.0, 0.0, 0.0)
    best = int(np.nanargmax(col))
    # Rows where the best model was not a candidate: that row's optimistic best instead.
    ref_col = np.where(np.isinf(q[:, best]), np.argmax(hi, axis=1), best)
    rows = np.arange(n)
    ref = float(q[rows, ref_col].mean())
    picks = np.argmax(q[None, :, :] - _GRID[:, None, None] * rel[None, :, :], axis=2)
    quality = q[rows[None, :], picks].mean(axis=1)
    cost = rel[rows[None, :], picks].mean(axis=1)
    models = np.arange(m)
    coef = (picks[:, :, None] == models).astype(float) - keep * (ref_col[:, None] == models)[None, :, :]
    margin = np.sqrt(((coef * sp[None, :, :]).mean(axis=1) ** 2).sum(axis=1))
    slack = quality - keep * ref - margin
    ok = np.flatnonzero(slack >= -1e-12)
    if not ok.size:
        return Calibrated(0.0, 0.0, 0.0, optimistic=bool(sp.any()))
    cheapest = ok[cost[ok] <= cost[ok].min() + 1e-12]
    weight = _middle(cheapest)
    nxt = int(cheapest.max()) + 1
    if nxt >= len(_GRID) or cost[nxt] >= cost[cheapest[0]] or slack[nxt] >= slack[cheapest[0]]:
        return Calibrated(weight, weight, 0.0)
    # Mixed with the next cheaper set with the probability that meets the bar, margin included.
    mix = slack[cheapest[0]] / (slack[cheapest[0]] - slack[nxt])
    same = np.flatnonzero(np.isclose(cost, cost[nxt]) & np.isclose(quality, quality[nxt]))
    same = same[same >= nxt]
    return Calibrated(weight, _middle(same), float(np.clip(mix, 0.0, 1.0)))


def _middle(indices: np.ndarray) -> float:
    """The middle of the range of grid weights at ``indices`` (a contiguous run of them)."""
    return float((_GRID[indices.min()] + _GRID[indices.max()]) / 2.0)


class ExplorationBudget:
    """Caps on exploration, as moving averages over about ``window`` decisions: the share of
    decisions that differ from the greedy choice (``max_share``), and their extra expected
    cost over the greedy choice as a share of what the same requests would cost on the dearest
    candidate (``max_spend_share``: exploration uses at most that much of the savings against
    an all-frontier deployment). A cap of 0 turns exploration off."""

    def __init__(self, max_share: float = 0.3, max_spend_share: float = 0.1, window: int = 500,
                 max_loss_share: float | None = None) -> None:
        self.max_share, self.max_spend_share = max_share, max_spend_share
        self.max_loss_share = max_loss_share
        self.top = 0.0  # moving average of the best candidate's estimated quality
        self.loss = 0.0  # moving average of exploration's estimated quality loss per decision
        self.alpha = 1.0 / max(1, window)
        self.share = 0.0
        self.frontier = 0.0  # moving average of the dearest candidate's expected cost
        self.extra = 0.0  # moving average of exploration's extra expected cost per decision
        self.spent_usd = 0.0  # exploration's extra expected cost, in total
        self.decisions = 0
        self.explored = 0

    def allows(self) -> bool:
        if self.max_share <= 0 or self.max_spend_share <= 0:
            return False
        if self.max_loss_share is not None and self.loss > self.max_loss_share * self.top:
            return False
        return self.share < self.max_share and self.extra <= self.max_spend_share * self.frontier

    def record(self, decision: Decision, costs: np.ndarray, means: np.ndarray | None = None) -> float:
        """Account one decision; returns its extra expected cost over the greedy choice."""
        extra = max(0.0, float(costs[decision.index] - costs[decision.greedy])) if decision.explored else 0.0
        a = self.alpha
        if means is not None:
            lost = max(0.0, float(means[decision.greedy] - means[decision.index])) if decision.explored else 0.0
            self.top += a * (float(means.max()) - self.top)
            self.loss += a * (lost - self.loss)
        self.share += a * ((1.0 if decision.explored else 0.0) - self.share)
        self.frontier += a * (float(costs.max()) - self.frontier)
        self.extra += a * (extra - self.extra)
        self.spent_usd += extra
        self.decisions += 1
        self.explored += int(decision.explored)
        return extra
