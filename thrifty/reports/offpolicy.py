"""Off-policy evaluation from the ledger: how good would another policy have been, on the traffic
the router actually served?

Every request the learned router decided carries the probability its model was chosen with
(``route_propensity``). On the *rated* ones (user feedback), the mean quality of the policy
"always model X" is estimated by inverse propensity weighting:

* **IPS** = mean over rated routed requests of ``1[served == X] * score / propensity``: unbiased
  when X had a positive chance on every request, but noisy;
* **self-normalised IPS** (SNIPS) = ``sum(w * score) / sum(w)`` with ``w = 1[served == X] /
  propensity``: a little biased, far less noisy, always within [0, 1];

each with a standard error (the sample's; the delta method for SNIPS) and a 90% normal
interval, and the **effective sample size** ``(sum w)^2 / sum(w^2)``: how many equally weighted
ratings the estimate is worth. Requests decided with certainty for another model (propensity 1:
the packaged router before any label, or exploration off) gave X no chance: IPS counts them as 0
(biased low) and SNIPS leaves them out (it estimates X on the other requests); their number is
reported. A request served by a fallback counts under the model that served it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z90 = 1.6448536269514722


@dataclass(frozen=True)
class OffPolicy:
    model: str
    rated: int  # rated routed requests
    matched: int  # of those, served by ``model``
    ips: float | None
    ips_se: float | None
    ips_interval: tuple[float, float] | None
    snips: float | None
    snips_se: float | None
    snips_interval: tuple[float, float] | None
    ess: float
    no_chance: int  # rated requests decided for another model with certainty
    confidence: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(model: str, served: Sequence[str | None], scores: Sequence[float],
             propensities: Sequence[float]) -> OffPolicy:
    """The estimates of "always ``model``" from logged (served, score, propensity) triples."""
    y = np.asarray(scores, dtype=np.float64)
    p = np.asarray(propensities, dtype=np.float64)
    hit = np.array([s == model for s in served], dtype=bool)
    n, k = len(y), int(hit.sum())
    no_chance = int(np.count_nonzero(~hit & (p >= 1.0)))
    if n == 0 or k == 0:
        why = "no rated routed request" if n == 0 else f"none of the {n} rated routed requests was served by it"
        return OffPolicy(model, n, k, None, None, None, None, None, None, 0.0, no_chance, f"no estimate: {why}")
    w = np.where(hit, 1.0 / np.clip(p, 1e-9, 1.0), 0.0)
    terms = w * y
    ips = float(terms.mean())
    ips_se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    snips = float(terms.sum() / w.sum())
    snips_se = float(math.sqrt(float(np.sum(w**2 * (y - snips) ** 2))) / w.sum())
    ess = float(w.sum() ** 2 / np.sum(w**2))
    return OffPolicy(model, n, k, ips, ips_se, (ips - Z90 * ips_se, ips + Z90 * ips_se), snips, snips_se,
                     (max(0.0, snips - Z90 * snips_se), min(1.0, snips + Z90 * snips_se)), ess, no_chance,
                     _confidence(ess, snips_se, no_chance, n))


def _confidence(ess: float, se: float, no_chance: int, n: int) -> str:
    """A plain word on how far to trust the numbers, and why."""
    if ess < 10:
        word = f"low: worth {ess:.1f} ratings (effective sample size under 10)"
    elif Z90 * se > 0.15:
        word = f"low: the 90% interval is +-{Z90 * se:.2f} wide"
    elif Z90 * se > 0.05:
        word = f"medium: the 90% interval is +-{Z90 * se:.2f}, worth {ess:.0f} ratings"
    else:
        word = f"high: the 90% interval is +-{Z90 * se:.2f}, worth {ess:.0f} ratings"
    if no_chance:
        word += (f"; the model had no chance on {no_chance} of {n} requests (chosen with certainty elsewhere): "
                 "IPS counts them as 0, SNIPS covers only the rest")
    return word


def logged(db: Any, filters: Any) -> tuple[list[str | None], list[float], list[float]]:
    """(served model, feedback score, propensity) of the rated requests the router decided."""
    rows = filters.rated_rows(db, "l.served_model, f.score, l.route_propensity",
                              "l.route_propensity IS NOT NULL AND l.route_propensity > 0 AND l.status = 200",
                              join="JOIN")
    return [r[0] for r in rows], [float(r[1]) for r in rows], [float(r[2]) for r in rows]
