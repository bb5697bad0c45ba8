"""Limits every JSON body is held to at the edge, before anything acts on it.

Depth: orjson serialises at most 255 levels, so a deeper document parses but fails later, when
the gateway forwards, stores or logs it (a 500 far from the cause). :data:`MAX_DEPTH` is far
above any real request (JSON schemas nest a few dozen levels) and 30 levels below orjson's
limit, room for the envelopes thrifty wraps bodies in (batch lines, cache entries).

Unicode: JSON lets a string escape a lone UTF-16 surrogate (``"\\ud800"``), which no UTF-8
text can hold: Python's json module accepts it, then a database driver or a response encoder
fails on it. Bodies are parsed with orjson, which refuses them; :func:`text_error` finds them
in values that came another way (CLI arguments decoded with ``surrogateescape``).
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

MAX_DEPTH = 224


# orjson serialises documents of at most this many levels (measured: 255 raises).
_ORJSON_DEPTH = 254
_local = threading.local()
# Containers a document is walked through before orjson decides its depth instead.
_WALK_CONTAINERS = 64


def _wrapper(levels: int) -> tuple[list[Any], list[Any]]:
    """(outer, holder): ``holder`` nested in ``levels`` lists in all; built once per thread."""
    cache = _local.__dict__.setdefault("wrappers", {})
    if levels not in cache:
        holder: list[Any] = []
        outer = holder
        for _ in range(levels - 1):
            outer = [outer]
        cache[levels] = (outer, holder)
    return cache[levels]


def deeper_than(raw: bytes, doc: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``doc`` (parsed from ``raw``) nests more than ``limit`` arrays/objects.

    Three ways, cheapest first, none of them reading every byte of a large body:

    * a body shorter than ``2 * (limit + 1)`` bytes cannot be deeper (each level is two bytes);
    * a document of few containers (the usual chat request: long strings in a handful of
      objects) is walked, at a cost that does not grow with its text (counting brackets in a
      30 KB body costs twice parsing it: measured 17 us against 9);
    * otherwise orjson's own depth limit decides, in C: ``doc`` inside ``254 - limit`` lists
      serialises only if it is at most ``limit`` deep (measured: 20 us for a 60 KB body whose
      parse takes 100 us).
    """
    if len(raw) < 2 * (limit + 1) or not (type(doc) is dict or type(doc) is list):
        return False
    budget = _WALK_CONTAINERS
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        budget -= 1
        if not budget:
            break  # many containers: orjson decides
        depth += 1
        for child in value.values() if type(value) is dict else value:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth))
    else:
        return False
    outer, holder = _wrapper(_ORJSON_DEPTH - limit)
    holder.append(doc)
    try:
        orjson.dumps(outer)
    except orjson.JSONEncodeError:
        return True
    finally:
        holder.clear()
    return False


def text_error(value: Any) -> str | None:
    """Why ``value`` (a string, or JSON-like data) cannot be stored as UTF-8 text, or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return "contains a lone surrogate or bytes that are not UTF-8"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None


def readable(value: Any) -> Any:
    """``value`` with every string made valid UTF-8 (invalid code points become U+FFFD): for
    rows stored before input was checked, so that reading them never fails."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {readable(k): readable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value
