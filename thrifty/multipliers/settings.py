"""The ``[cache]`` and ``[batches]`` sections of the gateway's TOML config::

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

Without a ``[cache]`` section there is no response cache at all (headers included).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from thrifty.errors import UsageError
from thrifty.multipliers.cache import MODES

__all__ = ["BatchSettings", "CacheSettings", "RouteCache", "load_settings"]


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


@dataclass(frozen=True, slots=True)
class BatchSettings:
    enabled: bool = True
    concurrency: int = 4


def _number(section: Mapping[str, Any], key: str, where: str, default: float | None) -> float | None:
    value = section.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"{where}.{key} must be a positive number, not {value!r}")
    return float(value)


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
                raise UsageError(f"cache.routes.{name!r}.mode must be one of {', '.join(MODES)}, not {mode!r}")
            share = r.get("share_with", ())
            if not isinstance(share, (list, tuple)) or not all(isinstance(s, str) for s in share):
                raise UsageError(f"cache.routes.{name!r}.share_with must be a list of model names")
            routes[name] = RouteCache(mode, _number(r, "ttl", f"cache.routes.{name!r}", None), tuple(share))
        threshold = _number(section, "semantic_threshold", "cache", None)
        if threshold is not None and threshold > 1:
            raise UsageError("cache.semantic_threshold must be within (0, 1]")
        cache = CacheSettings(backend=section.get("backend"), ttl=_number(section, "ttl", "cache", 3600.0) or 3600.0,
                              deterministic=bool(section.get("deterministic", True)),
                              semantic_threshold=threshold, routes=routes)
    b = doc.get("batches") or {}
    concurrency = int(_number(b, "concurrency", "batches", 4) or 4)
    return cache, BatchSettings(enabled=bool(b.get("enabled", True)), concurrency=concurrency)


def load_settings(config_path: str | Path | None) -> tuple[CacheSettings | None, BatchSettings]:
    """The multiplier sections of a gateway config file (defaults without a file)."""
    if config_path is None:
        return parse_settings({})
    try:
        with open(config_path, "rb") as f:
            return parse_settings(tomllib.load(f))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {config_path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {config_path} is not valid TOML: {exc}") from None
