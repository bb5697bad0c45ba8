"""Turn the user's knob into a cost weight, on a sample of prompts.

Every profile routes the same way: per request, the candidate maximising
``predicted quality - weight x cost / (most expensive candidate's cost)``.
A target share of calls for the most expensive model, or a target average
quality, is met by searching the weight on a calibration sample of prompts
(their predictions only: no labels are needed).
"""

from __future__ import annotations

import numpy as np

from thrifty.router.metrics import decide


def share_for_weight(pred: np.ndarray, unit_cost: np.ndarray, weight: float) -> float:
    """Share of prompts sent to the most expensive model at ``weight``."""
    return float(np.mean(decide(pred, unit_cost, weight) == int(np.argmax(unit_cost))))


def weight_for_share(pred: np.ndarray, unit_cost: np.ndarray, share: float) -> float:
    """The cost weight whose share of calls to the most expensive model is closest to ``share``.

    Negative when even weight 0 sends fewer calls there than asked: the predictor rarely
    prefers the expensive model, and only favouring it (paying for its cost) reaches the share.
    """
    lo, hi = 0.0, 1.0
    if share_for_weight(pred, unit_cost, 0.0) < share:
        lo, hi = -1.0, 0.0
        while share_for_weight(pred, unit_cost, lo) < share and lo > -1e6:
            lo *= 4
    else:
        while share_for_weight(pred, unit_cost, hi) > share and hi < 1e6:
            hi *= 4
    for _ in range(60):  # share falls as the weight rises
        mid = (lo + hi) / 2
        if share_for_weight(pred, unit_cost, mid) > share:
            lo = mid
        else:
            hi = mid
    below, above = share_for_weight(pred, unit_cost, hi), share_for_weight(pred, unit_cost, lo)
    return hi if abs(below - share) <= abs(above - share) else lo


def predicted_quality(pred: np.ndarray, unit_cost: np.ndarray, weight: float) -> float:
    choice = decide(pred, unit_cost, weight)
    return float(pred[np.arange(len(pred)), choice].mean())


def weight_for_quality(pred: np.ndarray, unit_cost: np.ndarray, target: float) -> float:
    """The largest cost weight whose predicted mean quality still reaches ``target``."""
    lo, hi = 0.0, 1e3
    if predicted_quality(pred, unit_cost, lo) < target:
        return 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if predicted_quality(pred, unit_cost, mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def weight_keeping(pred: np.ndarray, unit_cost: np.ndarray, keep: float) -> float:
    """The largest cost weight whose predicted mean quality keeps ``keep`` of the best (weight 0)."""
    return weight_for_quality(pred, unit_cost, keep * predicted_quality(pred, unit_cost, 0.0))
