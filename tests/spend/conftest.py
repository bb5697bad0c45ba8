"""Shared fixtures: a spend control on a fresh SQLite database, and the test PostgreSQL URL."""

from __future__ import annotations

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
