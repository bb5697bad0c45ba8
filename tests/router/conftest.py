"""The rated gateway (tests/router/rated_gateway.py), shared by the learning-status tests."""

from __future__ import annotations

import pytest
from rated_gateway import rated_gateway


@pytest.fixture(scope="session")
def rated(tmp_path_factory):
    yield from rated_gateway(tmp_path_factory)
