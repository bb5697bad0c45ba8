"""Shared fixtures: fake upstreams (one per behaviour) and a gateway on a real loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gw_setup import gateway_doc, serve_gateway

from thrifty.testing.fake_upstream import FakeUpstream


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    fakes = {
        "ok": FakeUpstream("ok"),
        "ok2": FakeUpstream("ok"),
        "error500": FakeUpstream("error500"),
        "hang": FakeUpstream("hang"),
        "break_stream": FakeUpstream("break_stream"),
    }
    for f in fakes.values():
        f.start()
    yield fakes
    for f in fakes.values():
        f.stop()


@pytest.fixture(scope="module")
def gateway(
    upstreams: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    """A gateway over the fake upstreams and the packaged replay records (no router, no spend)."""
    with serve_gateway(gateway_doc(upstreams, tmp_path_factory.mktemp("gw"))) as served:
        yield served
