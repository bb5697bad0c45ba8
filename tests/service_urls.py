"""Where the test PostgreSQL and Redis run (started by scripts/test-services.sh), shared by the
test folders. A module of its own, not a conftest: ``from conftest import`` picks whichever
conftest was imported first."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_STATE = Path(__file__).resolve().parents[1] / ".thrifty" / "test-services"


def _configured(env: str, name: str, default: str) -> str:
    path = _STATE / name
    return os.environ.get(env) or (path.read_text().strip() if path.exists() else "") or default


def postgres_url() -> str | None:
    """The test cluster's URL, or None when it is not reachable."""
    url = _configured("THRIFTY_TEST_PG_URL", "postgres.url", "postgresql://postgres@127.0.0.1:55432/thrifty_test")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception:  # noqa: BLE001 (a probe: any failure means no PostgreSQL to test against)
        return None
    return url


def redis_url() -> str | None:
    """The test Redis URL, or None when it is not reachable."""
    url = _configured("THRIFTY_TEST_REDIS_URL", "redis.url", "redis://127.0.0.1:56379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception:  # noqa: BLE001 (a probe: any failure means no Redis to test against)
        return None
    return url


def required(url: str | None, what: str) -> str:
    """``url``, else fail under CI (the services must be there) or skip on a developer machine."""
    if url is not None:
        return url
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is not reachable; scripts/test-services.sh should have started it")
    pytest.skip(f"{what} not available (run scripts/test-services.sh)")


def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the cluster at ``url`` for one test, dropped afterwards."""
    import psycopg

    name = "thrifty_t_" + uuid.uuid4().hex[:10]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
