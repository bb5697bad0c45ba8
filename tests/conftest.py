"""Suite-wide setup: every test talks to servers on loopback only.

A developer's or CI runner's proxy settings (needed to reach package registries)
must not reroute the gateway's loopback upstream calls, which now honour
``HTTPS_PROXY``/``HTTP_PROXY``; tests that exercise proxies set their own.
``pg_url`` (a fresh PostgreSQL database) serves every folder; see service_urls.py. So does
``upstream``, a fake OpenAI-compatible upstream answering "ok" (a module may define its own).
"""

import os
from collections.abc import Iterator

import pytest
from service_urls import fresh_database, postgres_url, required

from thrifty.testing.fake_upstream import FakeUpstream

for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)


@pytest.fixture
def pg_url():
    """A fresh, empty database on the test PostgreSQL; fails in CI when PostgreSQL is missing."""
    yield from fresh_database(required(postgres_url(), "PostgreSQL"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream that answers "ok" (one per test module)."""
    with FakeUpstream("ok") as fake:
        yield fake
