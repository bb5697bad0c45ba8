"""The contract between the gateway and spend control.

The gateway calls a :class:`SpendControl` at four points of every request:
``authenticate`` (who is calling), ``allowed`` (which models policy lets the
router and every fallback consider), ``admit`` (rate limits, then reserve the
request's maximum possible cost against every budget that applies) and
``settle`` (the actual cost, written to the ledger, releasing the rest of the
reservation). ``settle`` is called exactly once per admitted request, on
success and on failure alike, so no request escapes the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thrifty.catalog.model import ModelInfo
from thrifty.errors import ThriftyError


class SpendError(ThriftyError):
    """A request refused by spend control; rendered in the API's own error format."""

    status = 400
    type = "invalid_request_error"
    code = "spend_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)


class AuthError(SpendError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(SpendError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class PolicyDenied(SpendError):
    """No model is left once the caller's policies are applied."""

    status = 403
    type = "policy_error"
    code = "policy_denied"


class BudgetExceeded(SpendError):
    """The request could push a budget past its limit; says which one and when it resets."""

    status = 429
    type = "budget_exceeded"
    code = "budget_exceeded"
    budget_id: str | None = None  # which budget refused the request
    scope: str | None = None  # "key", "user" or "team"
    scope_id: str | None = None
    resets_at: str | None = None  # ISO 8601 UTC; None for a fixed window that never resets


class RateLimited(SpendError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class SpendUnavailable(SpendError):
    """Spend control cannot reach its shared database, so it cannot hold budgets: fail closed."""

    status = 503
    type = "api_error"
    code = "spend_unavailable"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind an API key."""

    key_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    routing_profile: str | None = None  # the default profile the policy sets, if any
    is_admin: bool = False


@dataclass(slots=True)
class Reservation:
    """Money held against the caller's budgets until the request settles."""

    principal: Principal
    model: str
    amount_usd: float
    token: Any = None  # implementation-private handle


@dataclass(slots=True)
class LedgerRecord:
    """One request, as the ledger stores it. Prices are USD per token."""

    request_id: str
    ts: float  # unix seconds when the request arrived
    key_id: str | None
    user_id: str | None
    team_id: str | None
    tags: tuple[str, ...]
    endpoint: str  # "chat.completions", "messages", "embeddings", ...
    requested_model: str
    served_model: str | None
    provider: str | None
    route_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's cache
    cache_write_tokens: int = 0
    input_price: float = 0.0
    output_price: float = 0.0
    cached_price: float = 0.0
    cost_usd: float = 0.0
    frontier_cost_usd: float = 0.0  # what the default frontier model would have cost
    latency_ms: float = 0.0
    status: int = 200  # HTTP status the client got
    error_type: str | None = None
    retries: int = 0
    stream: bool = False
    cache_hit: bool = False
    batch: bool = False
    scores: dict[str, float] | None = None  # the router's per-model quality predictions
    # Learned routing (thrifty.router.learning): the prompt's context (thrifty.router.online,
    # never its text), the probability the served model was chosen with, and whether the choice
    # explored (differed from the best estimate).
    route_context: str | None = None
    route_propensity: float | None = None
    route_explored: bool = False

    @classmethod
    def billed_to(cls, principal: Principal, **fields: Any) -> LedgerRecord:
        """A record attributed to ``principal``: its key, user, team and tags."""
        return cls(key_id=principal.key_id, user_id=principal.user_id, team_id=principal.team_id,
                   tags=principal.tags, **fields)


class SpendControl(Protocol):
    """Everything the pipeline asks of spend control; :class:`OpenSpendControl` and
    :class:`~thrifty.spend.control.DbSpendControl` implement all of it."""

    async def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an ``Authorization``/``x-api-key`` value; raise :class:`AuthError`."""

    def allowed(self, principal: Principal, candidates: Sequence[ModelInfo]) -> list[ModelInfo]:
        """The candidates policy permits; raise :class:`PolicyDenied` when none is left."""

    async def admit(
        self, principal: Principal, model: ModelInfo, *, prompt_tokens: int, max_cost_usd: float,
        ttl: float | None = None, request_id: str | None = None,
    ) -> Reservation:
        """Apply rate limits and reserve ``max_cost_usd`` on every budget that applies; ``ttl``:
        how long the hold counts if never settled (a provider batch line's window);
        ``request_id``: the request the hold is for, charged in full under that id if the process
        holding it dies (None: something else recovers it, as a batch recovers its lines)."""

    async def reinstate(
        self, principal: Principal, model: ModelInfo, *, max_cost_usd: float, ttl: float | None = None,
        hold_id: str | None = None,
    ) -> Reservation:
        """Hold ``max_cost_usd`` again for money already committed upstream (a provider batch
        line after a restart): no rate limit, never refused."""

    async def settle(self, reservation: Reservation | None, record: LedgerRecord) -> None:
        """Record the request (durably, before the client sees it complete) and settle budgets."""

    async def recorded(self, request_ids: Sequence[str]) -> set[str]:
        """Which of ``request_ids`` the ledger holds (resumed work is never billed twice)."""

    async def close(self) -> None: ...


class OpenSpendControl:
    """No keys, no budgets, no ledger: for benchmarks of the bare proxy path only."""

    async def authenticate(self, authorization: str | None) -> Principal:
        return Principal()

    def allowed(self, principal: Principal, candidates: Sequence[ModelInfo]) -> list[ModelInfo]:
        return list(candidates)

    async def admit(
        self, principal: Principal, model: ModelInfo, *, prompt_tokens: int, max_cost_usd: float,
        ttl: float | None = None, request_id: str | None = None,
    ) -> Reservation:
        return Reservation(principal, model.name, max_cost_usd)

    async def reinstate(
        self, principal: Principal, model: ModelInfo, *, max_cost_usd: float, ttl: float | None = None,
        hold_id: str | None = None,
    ) -> Reservation:
        return Reservation(principal, model.name, max_cost_usd)

    async def settle(self, reservation: Reservation | None, record: LedgerRecord) -> None:
        return None

    async def recorded(self, request_ids: Sequence[str]) -> set[str]:
        return set()  # no ledger: nothing was recorded, and nothing resumed is billed

    async def close(self) -> None:
        return None
