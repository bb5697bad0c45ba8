"""Config files and the embedded default."""

from __future__ import annotations

import pytest

from thrifty.config import build_config, default_document, load_config
from thrifty.errors import UsageError


def test_embedded_default_is_offline_and_keys_switch_providers_on(tmp_path):
    offline = build_config(default_document(env={}, local=False), data_dir=tmp_path, env={})
    assert set(offline.providers) == {"replay", "offline"}  # offline-echo: any other prompt
    assert "gpt-4-1106-preview" in offline.models and all(
        m.info.priced for m in offline.models.values()
    )
    online = build_config(
        default_document(env={"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-a"}),
        data_dir=tmp_path,
        env={"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-a"},
    )
    assert (
        online.providers["openai"].api_key == "sk-x"
        and online.providers["anthropic"].type == "anthropic"
    )
    assert (
        online.models["gpt-4o-mini"].info.priced and online.models["claude-haiku-4-5"].info.priced
    )


def test_toml_file(tmp_path):
    path = tmp_path / "thrifty.toml"
    path.write_text("""
frontier_model = "big"
data_dir = "state"
[providers.local]
type = "openai"
base_url = "http://127.0.0.1:1/v1"
api_key_env = "LOCAL_KEY"
[models.small]
provider = "local"
input_cost_per_token = 1e-7
output_cost_per_token = 2e-7
fallbacks = ["big"]
[models.big]
deployments = [{provider = "local", model = "big-v2", weight = 2}]
input_cost_per_token = 1e-5
output_cost_per_token = 3e-5
[profiles.thrifty]
cost_weight = 0.9
[retry]
attempts = 3
""")
    cfg = load_config(path, env={"LOCAL_KEY": "secret"})
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.providers["local"].api_key == "secret"
    assert cfg.models["small"].fallbacks == ("big",)
    assert (
        cfg.models["big"].deployments[0].model == "big-v2"
        and cfg.models["big"].deployments[0].weight == 2
    )
    assert cfg.profiles["thrifty"].cost_weight == 0.9 and cfg.retry.attempts == 3


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[providers.x\n", "not valid TOML"),
        ('[providers.x]\ntype = "grpc"\n', "must be one of"),
        ('[providers.x]\ntype = "openai"\n', "base_url is required"),
        ('[models.m]\nprovider = "nope"\n', "unknown provider"),
        (
            '[providers.p]\ntype="replay"\n[models.m]\nprovider = "p"\nfallbacks = ["ghost"]\n',
            "fallback 'ghost'",
        ),
        ('[timeouts]\ntotal = "long"\n', "timeouts.total must be a number"),
        ("router_reload_s = -1\n", "router_reload_s must be >= 0"),
        ('router_reload_s = "often"\n', "config.router_reload_s must be a number"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=fragment):
        load_config(path, env={})


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "nope.toml")
