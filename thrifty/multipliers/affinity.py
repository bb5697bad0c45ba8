"""Prefix affinity: send requests that share a prompt prefix to the same deployment.

Self-hosted servers (vLLM, SGLang) keep the KV cache of recent prompt prefixes and skip
their prefill; hosted providers bill cached input tokens at a fraction of the price. Both
pay off only when requests with the same long prefix (system prompt, documents) land where
that prefix was seen before, which round robin defeats: every deployment ends up holding
every tenant's prefix, and a limited cache thrashes.

:class:`PrefixAffinity` uses *consistent hashing with bounded loads* (Mirrokni, Thorup and
Zadimoghaddam, 2018): the key is a hash of the prompt's first ``key_chars`` characters; the
request goes to the first deployment clockwise from the key on a ring of virtual nodes
whose in-flight count is below ``ceil(load_factor * (in_flight + 1) / n)``. A hot tenant thus
spills to the next deployment on the ring instead of overloading its own, and adding or
removing a deployment moves only its share of keys.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["PrefixAffinity", "RoundRobin", "prefix_text"]


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_text(messages: Iterable[Mapping[str, Any]], limit: int) -> str:
    """The first ``limit`` characters of the prompt as the model reads it (roles and contents in
    order), enough to key on and cheap to build."""
    parts: list[str] = []
    size = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        piece = f"{m.get('role')}:{content or ''}\n"
        parts.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return "".join(parts)[:limit]


class PrefixAffinity:
    """Consistent hashing over prompt prefixes with bounded load, across named deployments."""

    def __init__(
        self,
        deployments: Sequence[str],
        *,
        load_factor: float = 1.25,
        vnodes: int = 64,
        key_chars: int = 512,
    ) -> None:
        if not deployments:
            raise ValueError("prefix affinity needs at least one deployment")
        if load_factor < 1.0:
            raise ValueError(f"load_factor must be >= 1, got {load_factor}")
        self.deployments = list(dict.fromkeys(deployments))
        self.load_factor = load_factor
        self.key_chars = key_chars
        ring = sorted(
            (_hash(f"{name}#{v}".encode()), name)
            for name in self.deployments
            for v in range(vnodes)
        )
        self._points = [p for p, _ in ring]
        self._owners = [n for _, n in ring]
        self.in_flight: dict[str, int] = {name: 0 for name in self.deployments}

    def key(self, text: str) -> int:
        return _hash(text[: self.key_chars].encode("utf-8", "surrogatepass"))

    def order(self, key: int) -> list[str]:
        """Deployments in the order to try: the first under the load bound clockwise from
        ``key``, then the others in ring order (the retry/fallback order)."""
        n = len(self.deployments)
        cap = math.ceil(self.load_factor * (sum(self.in_flight.values()) + 1) / n)
        start = bisect.bisect_left(self._points, key) % len(self._points)
        seen: list[str] = []
        chosen: str | None = None
        for step in range(len(self._points)):
            name = self._owners[(start + step) % len(self._points)]
            if name in seen:
                continue
            seen.append(name)
            if chosen is None and self.in_flight[name] < cap:
                chosen = name
            if len(seen) == n:
                break
        if chosen is None:  # cannot happen (some deployment is always under the cap); be safe
            chosen = seen[0]
        return [chosen] + [s for s in seen if s != chosen]

    def acquire(self, name: str) -> None:
        self.in_flight[name] += 1

    def release(self, name: str) -> None:
        self.in_flight[name] = max(0, self.in_flight[name] - 1)


class RoundRobin:
    """The baseline: each request to the next deployment."""

    def __init__(self, deployments: Sequence[str]) -> None:
        self.deployments = list(deployments)
        self._next = 0
        self.in_flight: dict[str, int] = {name: 0 for name in self.deployments}

    def key(self, text: str) -> int:
        return 0

    def order(self, key: int) -> list[str]:
        i = self._next
        self._next = (i + 1) % len(self.deployments)
        return self.deployments[i:] + self.deployments[:i]

    def acquire(self, name: str) -> None:
        self.in_flight[name] += 1

    def release(self, name: str) -> None:
        self.in_flight[name] = max(0, self.in_flight[name] - 1)


class DeploymentAffinity:
    """Prefix affinity for the gateway: for each model named in ``[affinity] models``, the
    order to try its deployments for a request (``order``), with in-flight counts kept by
    ``acquire``/``release`` around each upstream call."""

    def __init__(
        self,
        models: Mapping[str, Sequence[Any]],
        *,
        load_factor: float = 1.25,
        key_chars: int = 512,
    ) -> None:
        self.by_model: dict[str, tuple[PrefixAffinity, dict[str, Any]]] = {}
        for name, deployments in models.items():
            keyed = {d.key: d for d in deployments}
            self.by_model[name] = (
                PrefixAffinity(list(keyed), load_factor=load_factor, key_chars=key_chars),
                keyed,
            )

    def __contains__(self, model: str) -> bool:
        return model in self.by_model

    def order(self, model: str, body: Mapping[str, Any]) -> list[Any]:
        balancer, keyed = self.by_model[model]
        messages = body.get("messages")
        text = prefix_text(messages if isinstance(messages, list) else (), balancer.key_chars)
        return [keyed[k] for k in balancer.order(balancer.key(text))]

    def acquire(self, model: str, deployment: Any) -> None:
        self.by_model[model][0].acquire(deployment.key)

    def release(self, model: str, deployment: Any) -> None:
        self.by_model[model][0].release(deployment.key)
