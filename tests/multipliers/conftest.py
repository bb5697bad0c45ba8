"""Shared fixtures of the multiplier tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from thrifty.testing.fake_upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream that answers "ok" (one per test module)."""
    fake = FakeUpstream("ok")
    fake.start()
    yield fake
    fake.stop()
