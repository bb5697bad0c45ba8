"""The gateway's /metrics count learned routing: labels loaded, decisions by kind, exploration's cost."""

from __future__ import annotations

import re
from collections import Counter

import httpx
import pytest


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(thrifty_router_\w+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_router_counters_follow_the_traffic(rated):
    got = _samples(httpx.get(rated.url + "/metrics").text)
    kinds = Counter(s.kind for s in rated.sent)
    assert kinds["packaged"] and kinds["explored"]  # the fixture exercises both
    for kind in ("packaged", "learned", "explored"):
        assert got[f'thrifty_router_decisions_total{{kind="{kind}"}}'] == kinds[kind]
    assert got['thrifty_router_labels_total{source="feedback"}'] == len(rated.feedback)
    assert got['thrifty_router_labels_total{source="judge"}'] == len(rated.judge)
    assert sum(rated.extra_costs) > 0
    assert got["thrifty_router_exploration_cost_usd_total"] == pytest.approx(sum(rated.extra_costs), rel=1e-6)
