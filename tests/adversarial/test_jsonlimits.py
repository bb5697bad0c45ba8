"""The edge limits themselves: the depth check is exact at the limit, on small and large bodies,
and readable() turns what was stored before the checks into text that can always be sent."""

from __future__ import annotations

import orjson
import pytest

from thrifty.jsonlimits import MAX_DEPTH, deeper_than, readable, text_error


def _nested(depth: int, pad: int = 0) -> bytes:
    inner = b'"' + b"x" * pad + b'"'
    return b'{"a":' * (depth - 1) + b"[" + inner + b"]" + b"}" * (depth - 1)


@pytest.mark.parametrize("pad", [0, 40_000])
@pytest.mark.parametrize("limit", [MAX_DEPTH, 40, 3])  # walked (few containers) or orjson-checked
def test_depth_is_exact_at_the_limit(pad, limit):
    for depth, deeper in ((limit - 1, False), (limit, False), (limit + 1, True), (limit + 30, True)):
        raw = _nested(depth, pad)
        assert deeper_than(raw, orjson.loads(raw), limit) is deeper, depth


def test_depth_is_exact_in_wide_documents():
    """Many containers beside the deep branch (past what is walked): orjson decides, exactly."""
    for depth, deeper in ((MAX_DEPTH, False), (MAX_DEPTH + 1, True)):
        doc = {"wide": [{"x": [1]} for _ in range(300)], "deep": orjson.loads(_nested(depth - 1))}
        raw = orjson.dumps(doc) if depth <= 250 else b""
        assert deeper_than(raw, doc) is deeper, depth


def test_a_scalar_document_is_not_deep():
    assert not deeper_than(b'"' + b"x" * 1000 + b'"', "x" * 1000)


def test_a_short_body_is_never_deep():
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH  # the deepest body under 2 * (MAX_DEPTH + 1) bytes
    assert len(raw) < 2 * (MAX_DEPTH + 1) and not deeper_than(raw, orjson.loads(raw))


def test_many_brackets_but_shallow_is_not_deep():
    raw = orjson.dumps({"tools": [{"type": "object", "properties": {"a": {}}} for _ in range(500)]})
    assert not deeper_than(raw, orjson.loads(raw))


def test_text_error_and_readable():
    assert text_error({"a": ["ok", "é漢"]}) is None
    assert text_error({"a": ["ok", "\ud800"]}) and text_error({"\udcff": 1})
    fixed = readable({"k\ud800": ["x\udc80y", 1, None]})
    assert text_error(fixed) is None and orjson.dumps(fixed)
