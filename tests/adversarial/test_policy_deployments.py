"""Policy judges deployments, not a model's first deployment (issue 11.3), through ``thrifty serve``.

A model served by gpt-4o-mini (US) and by deepseek-chat (CN): a deny-CN team sees it in
/v1/models and is served by the US deployment only, whatever load balancing picks; an
allow-CN-only team is served by the CN deployment only; a team with no policy gets both. A
fallback chain and "auto" obey the same rule.
"""

from __future__ import annotations

import httpx
import pytest
from adv_setup import PRICE, Gateway, make_keys, write_toml

from thrifty.spend import admin_ops
from thrifty.spend.db import Database
from thrifty.testing.fake_upstream import FakeUpstream

ASK = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    with FakeUpstream("ok") as us, FakeUpstream("ok") as cn, FakeUpstream("error500") as bad:
        db_url = f"sqlite:///{tmp / 'gw' / 'spend.db'}"
        (tmp / "gw").mkdir()
        keys = make_keys(db_url, {"nocn": None, "onlycn": None, "open": None})
        db = Database(db_url)
        admin_ops.set_policy(db, "team", "nocn", {"deny_origin_countries": ["CN"]})
        admin_ops.set_policy(db, "team", "onlycn", {"allow_origin_countries": ["CN"]})
        db.close()
        config = write_toml(tmp / "gw.toml", {
            "data_dir": str(tmp / "gw"),
            "router_path": str(tmp / "no-router"),  # "auto" serves the cheapest permitted model
            "router": {"explore": False, "price_prior": 0.0},  # best estimate, flat priors
            "retry": {"attempts": 1},
            "spend": {"database_url": db_url},
            "providers": {"openai_us": {"type": "openai", "base_url": us.base_url},
                          "deepseek": {"type": "openai", "base_url": cn.base_url},
                          "down": {"type": "openai", "base_url": bad.base_url}},
            "models": {
                "mixed": {"deployments": [{"provider": "openai_us", "model": "gpt-4o-mini"},
                                          {"provider": "deepseek", "model": "deepseek-chat"}],
                          **PRICE, "fallbacks": ["us-only"]},
                "us-only": {"provider": "openai_us", "upstream_model": "gpt-4o-mini", **PRICE, "route": False},
                "cn-only": {"provider": "deepseek", "upstream_model": "deepseek-chat", **PRICE,
                            "input_cost_per_token": 1e-7},  # the cheapest: what "auto" picks when allowed
                # Its one deployment fails: the request falls back to "mixed".
                "flaky": {"provider": "down", "upstream_model": "gpt-4o-mini", **PRICE, "route": False,
                          "fallbacks": ["mixed"]},
            },
        })
        with Gateway(config, tmp / "gw.log") as gw:
            yield gw.url, keys, us, cn


def _models(url: str, key: str) -> set[str]:
    r = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]} & {"mixed", "us-only", "cn-only", "flaky"}


def _hits(served, team: str, model: str, n: int) -> tuple[list[int], int, int]:
    url, keys, us, cn = served
    us0, cn0 = us.hits, cn.hits
    statuses = [httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": ASK},
                           headers={"authorization": f"Bearer {keys[team]}"}, timeout=10).status_code
                for _ in range(n)]
    return statuses, us.hits - us0, cn.hits - cn0


def test_models_listed_when_a_deployment_is_permitted(served):
    url, keys, _us, _cn = served
    assert _models(url, keys["nocn"]) == {"mixed", "us-only", "flaky"}
    assert _models(url, keys["onlycn"]) == {"mixed", "cn-only"}
    assert _models(url, keys["open"]) == {"mixed", "us-only", "cn-only", "flaky"}


def test_deny_cn_never_reaches_the_cn_deployment(served):
    statuses, us, cn = _hits(served, "nocn", "mixed", 20)
    assert statuses == [200] * 20 and (us, cn) == (20, 0)


def test_allow_cn_only_never_reaches_the_us_deployment(served):
    statuses, us, cn = _hits(served, "onlycn", "mixed", 20)
    assert statuses == [200] * 20 and (us, cn) == (0, 20)
    assert _hits(served, "onlycn", "us-only", 1)[0] == [403]


def test_no_policy_balances_over_both(served):
    statuses, us, cn = _hits(served, "open", "mixed", 40)
    assert statuses == [200] * 40 and us >= 5 and cn >= 5 and us + cn == 40


def test_fallbacks_use_permitted_deployments_only(served):
    statuses, us, cn = _hits(served, "nocn", "flaky", 10)
    assert statuses == [200] * 10 and (us, cn) == (10, 0)


def test_auto_routes_to_permitted_deployments_only(served):
    statuses, us, cn = _hits(served, "nocn", "auto", 10)
    assert statuses == [200] * 10 and (us, cn) == (10, 0)  # "mixed" (cn-only denied), its US side
    statuses, us, cn = _hits(served, "open", "auto", 4)
    assert statuses == [200] * 4 and cn == 4  # the cheapest, cn-only
