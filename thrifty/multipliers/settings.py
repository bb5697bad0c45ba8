"""The multipliers' sections of the config tree, parsed once by thrifty/config.py::

    [cache]
    backend = "sqlite"              # or "redis://127.0.0.1:6379/0", or a SQLite file path
    ttl = 3600                      # seconds
    deterministic = true            # cache temperature-0 requests without an opt-in
    semantic_threshold = 0.99       # see docs/multipliers.md before lowering it

    [cache.routes."gpt-4o"]         # per requested model or routing profile
    mode = "semantic"               # exact | semantic | off
    ttl = 600
    share_with = ["gpt-4o-2024-08-06"]   # models whose cached answers this route accepts

    [batches]
    enabled = true                  # /v1/files and /v1/batches
    concurrency = 4                 # lines in flight per batch
    poll = 5                        # seconds between polls of provider batch APIs

    [providers.openai]
    batch_api = true                # send batch lines for this provider to its own batch API

    [affinity]                      # prefix affinity across a model's deployments (vLLM/SGLang pools)
    models = ["llama-3.3-70b"]      # instead of weighted random; see docs/multipliers.md
    load_factor = 1.25              # no deployment gets more than 1.25x the mean in-flight load
    key_chars = 512                 # the prompt prefix that is hashed

    [cascade]                       # the "auto-cascade" profile
    models = ["mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"]   # cheapest first

Without a ``[cache]`` section there is no response cache at all (headers included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thrifty.errors import UsageError
from thrifty.multipliers.cache import MODES

__all__ = [
    "AffinitySettings",
    "BatchSettings",
    "CacheSettings",
    "CascadeSettings",
    "RouteCache",
    "parse_affinity",
    "parse_cascade",
    "parse_settings",
]

CASCADE_PROFILE = "auto-cascade"


@dataclass(frozen=True, slots=True)
class RouteCache:
    mode: str | None = None  # None: deterministic requests only (when enabled)
    ttl: float | None = None
    share_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CacheSettings:
    backend: str | None = None
    ttl: float = 3600.0
    deterministic: bool = True
    semantic_threshold: float | None = None
    routes: Mapping[str, RouteCache] = field(default_factory=dict)
    memory_mb: float = 32.0  # each process's in-memory tier of recent entries (0: none)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    enabled: bool = True
    concurrency: int = 4
    poll: float = 5.0  # seconds between passes (provider batch APIs are polled this often)
    # shared-state: seconds a replica holds a batch without renewing; a dead replica's batches
    # are resumed by another after this.
    lease: float = 60.0


@dataclass(frozen=True, slots=True)
class CascadeSettings:
    models: tuple[str, ...] = ()  # empty: the gateway's default (see thrifty.gateway.assemble.default_cascade)


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    models: tuple[str, ...] = ()
    load_factor: float = 1.25
    key_chars: int = 512


def parse_affinity(doc: Mapping[str, Any]) -> AffinitySettings:
    section = doc.get("affinity") or {}
    models = section.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise UsageError("affinity.models must be a list of model names")
    load_factor = _number(section, "load_factor", "affinity", 1.25) or 1.25
    if load_factor < 1:
        raise UsageError("affinity.load_factor must be at least 1")
    return AffinitySettings(
        tuple(models), load_factor, int(_number(section, "key_chars", "affinity", 512) or 512)
    )


def _number(
    section: Mapping[str, Any], key: str, where: str, default: float | None
) -> float | None:
    value = section.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"{where}.{key} must be a positive number, not {value!r}")
    return float(value)


def parse_cascade(doc: Mapping[str, Any]) -> CascadeSettings:
    section = doc.get("cascade") or {}
    models = section.get("models", [])
    if (
        not isinstance(models, list)
        or not all(isinstance(m, str) for m in models)
        or len(models) == 1
    ):
        raise UsageError(
            "cascade.models must be a list of at least two model names, cheapest first"
        )
    return CascadeSettings(tuple(models))


def parse_settings(doc: Mapping[str, Any]) -> tuple[CacheSettings | None, BatchSettings]:
    cache: CacheSettings | None = None
    section = doc.get("cache")
    if section is not None:
        if not isinstance(section, Mapping):
            raise UsageError("[cache] must be a table")
        routes = {}
        for name, r in (section.get("routes") or {}).items():
            mode = r.get("mode")
            if mode is not None and mode not in MODES:
                raise UsageError(
                    f"cache.routes.{name!r}.mode must be one of {', '.join(MODES)}, not {mode!r}"
                )
            share = r.get("share_with", ())
            if not isinstance(share, (list, tuple)) or not all(isinstance(s, str) for s in share):
                raise UsageError(f"cache.routes.{name!r}.share_with must be a list of model names")
            routes[name] = RouteCache(
                mode, _number(r, "ttl", f"cache.routes.{name!r}", None), tuple(share)
            )
        threshold = _number(section, "semantic_threshold", "cache", None)
        if threshold is not None and threshold > 1:
            raise UsageError("cache.semantic_threshold must be within (0, 1]")
        memory_mb = section.get("memory_mb", 32)
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or memory_mb < 0:
            raise UsageError(f"cache.memory_mb must be a number of MiB, 0 or more, not {memory_mb!r}")
        cache = CacheSettings(
            backend=section.get("backend"),
            memory_mb=float(memory_mb),
            ttl=_number(section, "ttl", "cache", 3600.0) or 3600.0,
            deterministic=bool(section.get("deterministic", True)),
            semantic_threshold=threshold,
            routes=routes,
        )
    b = doc.get("batches") or {}
    concurrency = int(_number(b, "concurrency", "batches", 4) or 4)
    return cache, BatchSettings(
        enabled=bool(b.get("enabled", True)),
        concurrency=concurrency,
        poll=_number(b, "poll", "batches", 5.0) or 5.0,
        lease=_number(b, "lease", "batches", 60.0) or 60.0,  # shared-state
    )
