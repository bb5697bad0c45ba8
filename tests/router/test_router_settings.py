"""[router] settings reach the learner that routes, and bad values are one clear error."""

from __future__ import annotations

import pytest

from thrifty.config import build_config
from thrifty.errors import UsageError
from thrifty.gateway.assemble import create_app
from thrifty.router.settings import RouterSettings, parse_router
from thrifty.spend.contract import OpenSpendControl


def learner_for(tmp_path, router: dict):
    doc = {"data_dir": str(tmp_path), "router": router,
           "providers": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
           "models": {"m1": {"provider": "up", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}}
    return create_app(build_config(doc), spend=OpenSpendControl()).gw.router.learner


def test_defaults_caution_on_the_traffic_and_cap_exploration_loss(tmp_path):
    assert parse_router({}) == RouterSettings()
    learner = learner_for(tmp_path, {})
    assert learner.caution_on == "traffic" and learner.explore_loss_share == pytest.approx(0.01)


def test_the_earlier_rule_is_one_setting_away(tmp_path):
    learner = learner_for(tmp_path, {"caution_on": "models", "explore_max_loss_share": 0})
    assert learner.caution_on == "models" and learner.explore_loss_share is None


@pytest.mark.parametrize("router", [{"caution_on": "model"}, {"caution_on": 1}, {"explore_max_loss_share": 2},
                                    {"explore_max_loss_share": "a"}])
def test_bad_values_are_refused_by_name(router):
    with pytest.raises(UsageError, match="router.(caution_on|explore_max_loss_share)"):
        parse_router({"router": router})
