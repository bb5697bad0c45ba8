"""Gateway test setup shared by the fixtures and the tests that build their own gateways.

A module of its own (not conftest): several test folders have a conftest.py, and
``from conftest import ...`` resolves to whichever was imported first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thrifty.config import build_config
from thrifty.gateway.assemble import create_app
from thrifty.spend.contract import OpenSpendControl
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running

PRICE = {
    "input_cost_per_token": 1e-6,
    "output_cost_per_token": 2e-6,
    "context_window": 2000,
    "max_output_tokens": 1000,
}


def gateway_doc(upstreams: dict[str, FakeUpstream], tmp: Path) -> dict[str, Any]:
    providers = {name: {"type": "openai", "base_url": f.base_url} for name, f in upstreams.items()}
    providers["anth"] = {
        "type": "anthropic",
        "base_url": f"http://127.0.0.1:{upstreams['ok'].port}",
        "api_key": "sk-ant-test",
    }
    providers["replay"] = {"type": "replay", "source": "packaged"}
    from thrifty.config import _replay_models

    # The m-* models test named calls, fallbacks and balancing; ``auto`` routes among the
    # replayed benchmark models only (every priced routable model is an auto candidate).
    models: dict[str, Any] = {
        "m-ok": {"route": False, "provider": "ok", "upstream_model": "up-ok", **PRICE},
        "m-500": {"route": False, "provider": "error500", **PRICE, "fallbacks": ["m-ok"]},
        "m-500-alone": {"route": False, "provider": "error500", **PRICE},
        "m-hang": {"route": False, "provider": "hang", **PRICE, "fallbacks": ["m-ok"]},
        "m-break": {"route": False, "provider": "break_stream", **PRICE, "fallbacks": ["m-ok"]},
        "m-anth": {"route": False, "provider": "anth", **PRICE},
        "m-lb": {
            "route": False,
            "deployments": [{"provider": "ok", "model": "lb"}, {"provider": "ok2", "model": "lb"}],
            **PRICE,
        },
        "m-unpriced": {"provider": "ok", "route": False},
        "emb": {
            "provider": "ok",
            "mode": "embedding",
            "input_cost_per_token": 1e-7,
            "output_cost_per_token": 0.0,
            "route": False,
        },
        **_replay_models(),
    }
    for name in (
        "m-ok",
        "m-500",
        "m-500-alone",
        "m-hang",
        "m-break",
        "m-anth",
        "m-lb",
        "m-unpriced",
    ):
        models[name]["route"] = False
    return {
        "data_dir": str(tmp),
        "providers": providers,
        "models": models,
        "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02},
        "timeouts": {"connect": 1, "first_token": 0.5, "total": 1},
        "circuit_breaker": {"failures": 1000, "cooldown": 30},
        "max_body_bytes": 200_000,
    }


@contextlib.contextmanager
def serve_gateway(
    doc: dict[str, Any],
    *,
    spend: Any = None,
    router: Any = None,
    mounts: dict[str, Any] | None = None,
) -> Iterator[tuple[str, Any]]:
    config = build_config(doc, env={})
    app = create_app(config, spend=spend or OpenSpendControl(), router=router, mounts=mounts)
    with running(app) as url:
        yield url, app
