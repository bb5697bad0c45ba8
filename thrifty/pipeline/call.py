"""One request as an object, from the socket to the ledger.

An endpoint reads the body once, authenticates once and parses once into a :class:`Call`;
every stage of the pipeline (caches, cascade, deferral, planning, the upstream call, billing)
reads and fills the same object, and the endpoint renders what it holds in its wire format.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.pipeline.planner import Plan, Served
    from thrifty.pipeline.schemas import ChatRequest, EmbeddingsRequest
    from thrifty.spend.contract import Principal, Reservation

_ID_PREFIX = "req_" + os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)

# The endpoints, as the ledger names them.
CHAT, MESSAGES, RESPONSES, EMBEDDINGS = "chat.completions", "messages", "responses", "embeddings"


def new_request_id() -> str:
    """Unique per process start and request; a counter, because a getrandom() syscall per request
    costs more than the rest of the id (measured: ~15 us on the benchmark machine)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


class Call:
    """Per-request state: who asks, what they asked, what was decided, what must be settled."""

    __slots__ = (
        "batch_line",
        "cache_header",
        "cascade",
        "chat",
        "defer",
        "embeddings",
        "endpoint",
        "hit",
        "plan",
        "principal",
        "purpose",
        "request_id",
        "reservation",
        "saved_usd",
        "served",
        "settled",
        "stream",
        "t0",
        "ts",
    )

    def __init__(
        self,
        endpoint: str,
        principal: Principal,
        *,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.principal = principal
        self.request_id = request_id or new_request_id()
        self.ts = time.time() if ts is None else ts
        self.t0 = time.perf_counter()
        self.chat: ChatRequest | None = None
        self.embeddings: EmbeddingsRequest | None = None
        self.stream = False
        self.cache_header: str | None = None  # x-thrifty-cache
        self.defer: str | None = None  # x-thrifty-defer
        self.batch_line = False  # a line of a batch: no cache, cascade or deferral; batch = true
        self.plan: Plan | None = None
        self.served: Served | None = None
        self.reservation: Reservation | None = None
        self.settled = False
        self.hit: str | None = None  # "exact" / "semantic" when answered from the cache
        self.saved_usd = 0.0  # what a cache hit saved
        self.cascade: list[str] | None = None  # the cascade's trail, "model:pass|fail|status"
        self.purpose: str | None = None  # a call the gateway makes itself: why (ledger reason)

    @property
    def model(self) -> str:
        """The model the client asked for."""
        req: Any = self.chat if self.chat is not None else self.embeddings
        return req.model if req is not None else ""

    def latency_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000
