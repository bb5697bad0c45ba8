from decimal import Decimal

import pytest

from thrifty.catalog.model import ModelInfo, PriceTier
from thrifty.spend.pricing import UnpricedModel, cost_usd, max_cost_usd, tier_for

# Anthropic-like prices, with a long-context tier above 200k prompt tokens.
M = ModelInfo(
    "m", "anthropic", input_cost_per_token=3e-6, output_cost_per_token=15e-6, cache_read_input_token_cost=3e-7,
    cache_creation_input_token_cost=3.75e-6, input_cost_per_token_batches=1.5e-6, output_cost_per_token_batches=7.5e-6,
    tiers=(PriceTier(200_000, 6e-6, 22.5e-6, 6e-7),),
)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1000, 500), "0.0105"),  # 1000 x $3/M + 500 x $15/M
        ((1000, 500, 400, 100), "0.009495"),  # 500 fresh, 400 cached reads at $0.30/M, 100 writes at $3.75/M
        ((200_000, 0), "0.6"),  # exactly at the threshold: still the base tier
        ((200_001, 0), "1.200006"),  # one token over: the whole prompt at the tier's $6/M
        ((250_000, 1000, 50_000), "1.2525"),  # tier: 200k fresh x $6/M + 50k cached x $0.60/M + 1k x $22.5/M
    ],
)
def test_fixed_costs_per_tier(args, expected):
    assert cost_usd(M, *args) == Decimal(expected)


def test_batch_prices_and_their_absence():
    assert cost_usd(M, 1000, 500, batch=True) == Decimal("0.00525")
    plain = ModelInfo("p", "openai", input_cost_per_token=2.5e-6, output_cost_per_token=1e-5)
    assert cost_usd(plain, 1000, 100, batch=True) == cost_usd(plain, 1000, 100) == Decimal("0.0035")


def test_missing_cache_prices_fall_back_to_input_price_and_tier_keeps_base_cached_price():
    plain = ModelInfo("p", "openai", input_cost_per_token=2e-6, output_cost_per_token=8e-6)
    assert cost_usd(plain, 100, 0, cached_tokens=60, cache_write_tokens=40) == Decimal("0.0002")
    tiered = ModelInfo("g", "google", input_cost_per_token=1.25e-6, output_cost_per_token=1e-5,
                       cache_read_input_token_cost=3.1e-7, tiers=(PriceTier(200_000, 2.5e-6, 1.5e-5),))
    # 100k cached at the base $0.31/M, 150k fresh at $2.50/M, 2000 out at $15/M
    assert cost_usd(tiered, 250_000, 2000, cached_tokens=100_000) == Decimal("0.031") + Decimal("0.375") + Decimal("0.03")
    assert tier_for(tiered, 200_000) is None and tier_for(tiered, 200_001) is tiered.tiers[0]


def test_highest_exceeded_tier_wins():
    m = ModelInfo("t", "x", input_cost_per_token=1e-6, output_cost_per_token=1e-6,
                  tiers=(PriceTier(1000, 2e-6, 2e-6), PriceTier(10_000, 4e-6, 4e-6)))
    assert cost_usd(m, 5000, 0) == Decimal("0.01")
    assert cost_usd(m, 20_000, 0) == Decimal("0.08")


def test_rounding_to_the_nano_dollar_half_even():
    m = ModelInfo("r", "x", input_cost_per_token=3.75e-8, output_cost_per_token=0.0)
    assert cost_usd(m, 1, 0) == Decimal("0.000000038")  # 37.5 nano -> 38
    assert cost_usd(m, 3, 0) == Decimal("0.000000112")  # 112.5 nano -> 112


def test_max_cost_holds_the_dearest_case():
    # every prompt token at the cache-write price ($3.75/M > $3/M), 1000 output at $15/M
    assert max_cost_usd(M, 1000, 1000) == Decimal("0.01875")
    for cached, written in ((0, 0), (1000, 0), (0, 1000), (500, 500)):
        assert cost_usd(M, 1000, 1000, cached, written) <= max_cost_usd(M, 1000, 1000)


def test_bad_input_is_a_clear_error():
    with pytest.raises(UnpricedModel, match="no input or output price"):
        cost_usd(ModelInfo("u", "x"), 1, 1)
    with pytest.raises(ValueError, match="exceed prompt_tokens"):
        cost_usd(M, 10, 0, cached_tokens=11)
    with pytest.raises(ValueError, match="non-negative"):
        cost_usd(M, -1, 0)
