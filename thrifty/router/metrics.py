"""Routing metrics, defined exactly (docs/router.md repeats these definitions).

Strong/weak pair, on n test prompts with correctness labels ``y_strong``,
``y_weak`` and a router score ``s`` (higher = more reason to call the strong
model):

* Sending the k highest-scored prompts to the strong model and the rest to the
  weak one gives quality ``Q(k) = mean_i y_i`` with ``y_i`` the label of the
  model prompt i went to. Prompts with equal scores are ordered at random, and
  ``Q(k)`` is its expectation (linear within a tie).
* ``PGR(k) = (Q(k) - Q(0)) / (Q(n) - Q(0))``: the share of the
  weak-to-strong quality gap recovered with a share k/n of strong calls.
* ``APGR``: the area under PGR against the strong share from 0 to 1
  (trapezoids over all n+1 points). A random router scores 0.5 in expectation.
* ``CPT(x)``: the smallest strong share k/n with ``PGR(k) >= x``.

N models: each operating point of a router (one value of its cost weight) has
an average cost and an average quality on the test prompts; single models are
points too. ``cost_to_match`` is the lowest average cost at which the router's
quality reaches the best single model's, reported also as a share of that
model's cost.

Confidence intervals: percentile bootstrap over test prompts (the router's
decisions fixed, prompts resampled with replacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PairCurve:
    share: np.ndarray  # k / n for k = 0..n
    quality: np.ndarray  # Q(k)

    @property
    def pgr(self) -> np.ndarray:
        gap = self.quality[-1] - self.quality[0]
        if gap <= 0:
            return np.full_like(self.quality, np.nan)
        return (self.quality - self.quality[0]) / gap

    def apgr(self) -> float:
        pgr = self.pgr
        return float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(self.share)) / 2.0)

    def cpt(self, x: float) -> float:
        pgr = self.pgr
        hit = np.flatnonzero(pgr >= x - 1e-12)
        return float(self.share[hit[0]]) if hit.size else float("nan")

    def quality_at(self, share: float) -> float:
        return float(np.interp(share, self.share, self.quality))


def pair_curve(score: np.ndarray, y_strong: np.ndarray, y_weak: np.ndarray) -> PairCurve:
    score = np.asarray(score, dtype=float)
    n = score.size
    order = np.argsort(-score, kind="stable")
    s = score[order]
    delta = (np.asarray(y_strong, float) - np.asarray(y_weak, float))[order]
    # Replace each prompt's gain by its tie group's mean gain: the expected gain
    # under random order within the tie, so cumsum interpolates linearly.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sums = np.add.reduceat(delta, starts) if n else np.zeros(0)
    sizes = np.diff(np.r_[starts, n])
    mean_delta = np.repeat(sums / sizes, sizes)
    base = float(np.mean(y_weak)) if n else 0.0
    quality = base + np.r_[0.0, np.cumsum(mean_delta)] / max(n, 1)
    return PairCurve(np.arange(n + 1) / max(n, 1), quality)


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half);
    NaN when either class is empty."""
    score = np.asarray(score, float)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based, averaged within ties
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap(stat, n: int, *, rounds: int = 500, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(index)`` over resamples of ``range(n)``."""
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(rounds)], dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def pair_report(score: np.ndarray, y_strong: np.ndarray, y_weak: np.ndarray, *, rounds: int = 500) -> dict:
    curve = pair_curve(score, y_strong, y_weak)
    n = len(score)

    def stat(fn):
        return lambda idx: fn(pair_curve(score[idx], y_strong[idx], y_weak[idx]))

    return {
        "n": n,
        "quality_weak": float(curve.quality[0]),
        "quality_strong": float(curve.quality[-1]),
        "apgr": curve.apgr(),
        "apgr_ci": bootstrap(stat(PairCurve.apgr), n, rounds=rounds),
        "cpt50": curve.cpt(0.5),
        "cpt50_ci": bootstrap(stat(lambda c: c.cpt(0.5)), n, rounds=rounds),
        "cpt80": curve.cpt(0.8),
        "cpt80_ci": bootstrap(stat(lambda c: c.cpt(0.8)), n, rounds=rounds),
    }


@dataclass
class CostQualityCurve:
    """Operating points of a router: one row per cost weight."""

    weights: np.ndarray
    choice: np.ndarray  # points x n: index of the model each prompt went to
    cost: np.ndarray  # n x M realised cost of each model on each prompt
    labels: np.ndarray  # n x M

    def points(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(self.cost.shape[0]) if idx is None else idx
        ch = self.choice[:, rows]
        c = self.cost[rows[None, :], ch].mean(axis=1)
        q = self.labels[rows[None, :], ch].mean(axis=1)
        return c, q


def decide(quality: np.ndarray, unit_cost: np.ndarray, weight: float) -> np.ndarray:
    """Per prompt, the model maximising predicted quality - weight x relative cost."""
    rel = unit_cost / unit_cost.max()
    if np.isinf(weight):
        return np.broadcast_to(np.argmin(rel), quality.shape[:1]).copy()
    return np.argmax(quality - weight * rel[None, :], axis=1)


WEIGHT_GRID = np.r_[0.0, np.logspace(-3, 2, 80), np.inf]


def cost_quality_curve(pred: np.ndarray, unit_cost: np.ndarray, cost: np.ndarray, labels: np.ndarray,
                       weights: np.ndarray = WEIGHT_GRID) -> CostQualityCurve:
    choice = np.stack([decide(pred, unit_cost, w) for w in weights])
    return CostQualityCurve(weights, choice, cost, labels)


def cost_to_match(c: np.ndarray, q: np.ndarray, target_quality: float) -> float:
    ok = q >= target_quality - 1e-12
    return float(c[ok].min()) if ok.any() else float("nan")


def n_model_report(curve: CostQualityCurve, models: list[str], *, rounds: int = 500) -> dict:
    n = curve.cost.shape[0]
    single_cost = curve.cost.mean(axis=0)
    single_quality = curve.labels.mean(axis=0)
    best = int(np.argmax(single_quality))
    c, q = curve.points()

    def ratio(idx):
        cc, qq = curve.points(idx)
        target = curve.labels[idx, best].mean()
        return cost_to_match(cc, qq, target) / curve.cost[idx, best].mean()

    match = cost_to_match(c, q, float(single_quality[best]))
    return {
        "n": n,
        "singles": {m: {"cost": float(single_cost[j]), "quality": float(single_quality[j])} for j, m in enumerate(models)},
        "best_single": models[best],
        "points": [{"weight": float(w), "cost": float(ci), "quality": float(qi)}
                   for w, ci, qi in zip(curve.weights, c, q)],
        "max_quality": float(q.max()),
        "cost_to_match_best": match,
        "cost_to_match_best_share": float("nan") if np.isnan(match) else match / float(single_cost[best]),
        "cost_to_match_best_share_ci": bootstrap(ratio, n, rounds=rounds),
        "cost_share_for_quality_share": {
            f"{r:g}": cost_to_match(c, q, r * float(single_quality[best])) / float(single_cost[best])
            for r in (0.95, 0.98, 0.99, 1.0)
        },
    }
