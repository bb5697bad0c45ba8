"""The price catalog: vendored snapshot, refreshed copy, overrides, origins."""

from __future__ import annotations

import json

import pytest

from thrifty.catalog.loader import PACKAGED_SNAPSHOT, Catalog, fetch_update
from thrifty.catalog.origins import origin_of
from thrifty.cli import main
from thrifty.errors import UsageError


def test_packaged_snapshot_prices_known_models():
    cat = Catalog.load(None)
    info = cat.model("gpt-4o-mini", "openai")
    assert info.priced and info.input_cost_per_token == pytest.approx(1.5e-7)
    assert info.output_cost_per_token == pytest.approx(6e-7)
    assert info.cache_read_input_token_cost == pytest.approx(7.5e-8)
    assert info.input_cost_per_token_batches == pytest.approx(7.5e-8)
    assert info.context_window == 128000 and info.origin_country == "US"
    assert cat.model("deepseek-chat", "deepseek").origin_country == "CN"


def test_unknown_model_is_unpriced_until_config_sets_a_price():
    cat = Catalog.load(None)
    assert not cat.model("my-local-llm", "ollama").priced
    info = cat.model(
        "my-local-llm",
        "ollama",
        overrides={
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
            "regions": ["eu"],
            "origin_country": "FR",
        },
    )
    assert info.priced and info.regions == ("eu",) and info.origin_country == "FR"
    with pytest.raises(UsageError, match="unknown catalog field"):
        cat.model("x", "openai", overrides={"input_price": 1})


def test_provider_prefixed_lookup():
    cat = Catalog.load(None)
    assert cat.model("g", "gemini", upstream_model="gemini-2.5-flash").priced


@pytest.mark.parametrize(
    "model, country",
    [
        ("gpt-4-1106-preview", "US"),
        ("claude-v1", "US"),
        ("mistralai/mixtral-8x7b-chat", "FR"),
        ("zero-one-ai/Yi-34B-Chat", "CN"),
        ("moonshotai/kimi-k2", "CN"),
        ("z-ai/glm-4.6", "CN"),
        ("qwen/qwen3-235b", "CN"),
        ("meta/llama-2-70b-chat", "US"),
        ("o3-mini", "US"),
        ("unknown-thing", None),
    ],
)
def test_origins(model, country):
    assert origin_of(model) == country


def test_refreshed_snapshot_in_data_dir_wins(tmp_path):
    small = {
        f"m{i}": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6} for i in range(150)
    }
    src = tmp_path / "src.json"
    src.write_text(json.dumps(small))
    data = tmp_path / "data"
    path, n = fetch_update(
        data, src.as_uri()
    )  # file:// stands in for the public URL (no network in tests)
    assert n == 150 and path.parent == data
    assert Catalog.load(data).model("m3", "x").priced
    assert Catalog.load(tmp_path / "empty").source == str(PACKAGED_SNAPSHOT)


def test_update_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2, 3]")
    with pytest.raises(UsageError):
        fetch_update(tmp_path / "d", bad.as_uri())
    assert not (tmp_path / "d" / "model_prices.json").exists()


def test_catalog_cli(tmp_path, capsys):
    assert main(["catalog", "show", "gpt-4o", "--data-dir", str(tmp_path)]) == 0
    assert "input $2.5/M" in capsys.readouterr().out
    assert main(["catalog", "show", "no-such-model", "--data-dir", str(tmp_path)]) == 2
    src = tmp_path / "p.json"
    src.write_text(PACKAGED_SNAPSHOT.read_text())
    assert main(["catalog", "update", "--data-dir", str(tmp_path), "--url", src.as_uri()]) == 0
    assert (tmp_path / "model_prices.json").is_file()
