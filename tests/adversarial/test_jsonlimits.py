"""The edge limits themselves: the depth check is exact at the limit, on small and large bodies,
and readable() turns what was stored before the checks into text that can always be sent."""

from __future__ import annotations

import orjson
import pytest

from thrifty.jsonlimits import MAX_DEPTH, deeper_than, readable, text_error


def _nested(depth: int, pad: int = 0) -> bytes:
    inner = b'"' + b"x" * pad + b'"'
    return b'{"a":' * (depth - 1) + b"[" + inner + b"]" + b"}" * (depth - 1)


@pytest.mark.parametrize("pad", [0, 40_000])  # small bodies are decided by counting brackets
def test_depth_is_exact_at_the_limit(pad):
    for depth, deeper in ((MAX_DEPTH - 1, False), (MAX_DEPTH, False), (MAX_DEPTH + 1, True), (250, True)):
        raw = _nested(depth, pad)
        assert deeper_than(raw, orjson.loads(raw)) is deeper, depth


def test_many_brackets_but_shallow_is_not_deep():
    raw = orjson.dumps({"tools": [{"type": "object", "properties": {"a": {}}} for _ in range(500)]})
    assert not deeper_than(raw, orjson.loads(raw))


def test_text_error_and_readable():
    assert text_error({"a": ["ok", "é漢"]}) is None
    assert text_error({"a": ["ok", "\ud800"]}) and text_error({"\udcff": 1})
    fixed = readable({"k\ud800": ["x\udc80y", 1, None]})
    assert text_error(fixed) is None and orjson.dumps(fixed)
