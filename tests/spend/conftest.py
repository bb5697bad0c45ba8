"""Shared fixtures: a spend control on a fresh SQLite database, and the test PostgreSQL URL."""

from __future__ import annotations

import os
import pathlib
import time
import uuid

import pytest

from thrifty.catalog.model import ModelInfo
from thrifty.spend import LedgerRecord
from thrifty.spend.control import DbSpendControl

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ModelInfo("m-small", "openai", origin_country="US", regions=("us",),
                  input_cost_per_token=1e-6, output_cost_per_token=2e-6)


def record(request_id: str | None = None, cost: float = 0.0, status: int = 200, **kw) -> LedgerRecord:
    return LedgerRecord(
        request_id=request_id or uuid.uuid4().hex, ts=time.time(), key_id=None, user_id=None, team_id=None,
        tags=(), endpoint="chat.completions", requested_model="auto", served_model="m-small", provider="openai",
        route_reason="test", cost_usd=cost, status=status, **kw,
    )


@pytest.fixture
def control(tmp_path):
    spend = DbSpendControl(f"sqlite:///{tmp_path / 'spend.db'}", tmp_path / "journal", admin_key="sk-thr-admin-test")
    yield spend
    import asyncio

    asyncio.run(spend.close())


def postgres_url() -> str | None:
    """The test cluster's URL (scripts/test-services.sh), or None when it is not reachable."""
    url = os.environ.get("THRIFTY_TEST_PG_URL")
    path = ROOT / ".thrifty" / "test-services" / "postgres.url"
    if not url and path.exists():
        url = path.read_text().strip()
    url = url or "postgresql://postgres@127.0.0.1:55432/thrifty_test"
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception:  # noqa: BLE001 (a probe: any failure means no PostgreSQL to test against)
        return None
    return url


@pytest.fixture
def pg_url():
    """A fresh, empty schema-less database on the test cluster; fails in CI when PostgreSQL is missing."""
    url = postgres_url()
    if url is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL is not reachable; scripts/test-services.sh should have started it")
        pytest.skip("PostgreSQL not available (run scripts/test-services.sh)")
    import psycopg

    name = "thrifty_t_" + uuid.uuid4().hex[:10]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    test_url = url.rsplit("/", 1)[0] + "/" + name
    yield test_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
