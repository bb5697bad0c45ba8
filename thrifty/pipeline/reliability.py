"""Circuit breakers, jittered backoff and load balancing across a model's deployments."""

from __future__ import annotations

import random
import time

from thrifty.config import BreakerPolicy, Deployment, RetryPolicy

PASS = "pass"  # the circuit is closed: the call goes through
PROBE = "probe"  # the circuit is half-open and this caller holds its one probe


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``cooldown`` lets one probe through.

    A success closes it again; a failed probe re-opens it for another cooldown. Only what the
    upstream did may move it: a caller that took the probe (:meth:`acquire`) and never got an
    upstream outcome (it failed inside the gateway, was cancelled, or got an answer that says
    nothing about health, such as a 400) must :meth:`release` it, or the model would stay
    switched off for every tenant.
    """

    __slots__ = ("failures", "opened_at", "policy", "probing")

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.policy.cooldown:
            return "half-open"
        return "open"

    def acquire(self) -> str | None:
        """:data:`PASS`, :data:`PROBE` (the caller now holds the probe and must resolve it with
        :meth:`success`, :meth:`failure` or :meth:`release`), or None: refused."""
        state = self.state
        if state == "closed":
            return PASS
        if state == "half-open" and not self.probing:
            self.probing = True
            return PROBE
        return None

    def allow(self) -> bool:
        return self.acquire() is not None

    def release(self) -> None:
        """Give the probe back unresolved: the next request may probe."""
        self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.policy.failures:
            self.opened_at = time.monotonic()


def backoff_delay(retry: int, policy: RetryPolicy, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
    """Full-jitter exponential backoff: uniform in [0, min(max, base * 2**retry)]."""
    return rng.uniform(0, min(policy.backoff_max, policy.backoff_base * (2**retry)))


def order_deployments(
    deployments: tuple[Deployment, ...], rng: random.Random = random._inst
) -> list[Deployment]:  # type: ignore[attr-defined]
    """Weighted random order (load balancing): the first is picked in proportion to its weight,
    the rest follow as the retry order."""
    if len(deployments) == 1:
        return [deployments[0]]
    pool = list(deployments)
    out = []
    while pool:
        pick = rng.choices(range(len(pool)), weights=[d.weight for d in pool])[0]
        out.append(pool.pop(pick))
    return out
