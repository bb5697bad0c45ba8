import pytest

from thrifty.catalog.model import ModelInfo
from thrifty.spend import PolicyDenied, admin_ops
from thrifty.spend.policy import Policy, filter_models

US = ModelInfo("gpt-4o-mini", "openai", origin_country="US", regions=("us", "eu"),
               input_cost_per_token=1.5e-7, output_cost_per_token=6e-7)
CN = ModelInfo("deepseek-chat", "deepseek", origin_country="CN", regions=("cn",),
               input_cost_per_token=2.7e-7, output_cost_per_token=1.1e-6)
FR = ModelInfo("mistral-large", "mistral", origin_country="FR", regions=("eu",),
               input_cost_per_token=2e-6, output_cost_per_token=6e-6)
UNKNOWN = ModelInfo("mystery", "openrouter", input_cost_per_token=1e-6, output_cost_per_token=1e-6)
ALL = [US, CN, FR, UNKNOWN]


@pytest.mark.parametrize("rules, kept", [
    ({}, ["gpt-4o-mini", "deepseek-chat", "mistral-large", "mystery"]),
    ({"deny_origin_countries": ["cn"]}, ["gpt-4o-mini", "mistral-large"]),  # unknown origin fails closed
    ({"allow_origin_countries": ["FR", "US"]}, ["gpt-4o-mini", "mistral-large"]),
    ({"allow_regions": ["eu"]}, ["mistral-large"]),  # every hosting region must be allowed
    ({"deny_regions": ["cn"]}, ["gpt-4o-mini", "mistral-large"]),
    ({"allow_models": ["gpt-*", "mystery"]}, ["gpt-4o-mini", "mystery"]),
    ({"deny_models": ["*-chat"]}, ["gpt-4o-mini", "mistral-large", "mystery"]),
    ({"allow_providers": ["OpenAI", "mistral"]}, ["gpt-4o-mini", "mistral-large"]),
    ({"deny_providers": ["openrouter"]}, ["gpt-4o-mini", "deepseek-chat", "mistral-large"]),
    ({"max_usd_per_mtok": 1.1}, ["gpt-4o-mini", "deepseek-chat", "mystery"]),  # $1.10/M exactly is allowed
])
def test_rules(rules, kept):
    models, denied = filter_models([Policy.from_rules(rules)], ALL)
    assert [m.name for m in models] == kept
    assert set(denied) == {m.name for m in ALL} - set(kept)


def test_bad_rules_are_rejected():
    for rules in ({"deny_planets": ["x"]}, {"allow_models": "a,b", "max_usd_per_mtok": -1},
                  {"deny_models": [1]}, [1, 2]):
        with pytest.raises(ValueError):
            Policy.from_rules(rules)


def test_key_and_team_policies_both_apply_and_an_empty_result_is_an_error(control):
    import asyncio

    admin_ops.create_team(control.db, "gov")
    rec, secret = admin_ops.create_key(control.db, team_id="gov")
    admin_ops.set_policy(control.db, "team", "gov", {"deny_origin_countries": ["CN"], "routing_profile": "quality"})
    admin_ops.set_policy(control.db, "key", rec["id"], {"allow_regions": ["eu"]})
    control.reload()
    p = asyncio.run(control.authenticate(secret))
    assert p.routing_profile == "quality"
    assert [m.name for m in control.allowed(p, ALL)] == ["mistral-large"]
    with pytest.raises(PolicyDenied, match="deepseek-chat: hosting region not allowed") as info:
        control.allowed(p, [CN, US])
    assert info.value.status == 403 and "team 'gov'" in info.value.message
