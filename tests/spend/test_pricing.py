from decimal import Decimal

import pytest

from thrifty.catalog.model import ModelInfo, PriceTier
from thrifty.spend.money import nanos_to_usd
from thrifty.spend.pricing import UnpricedModel, cost_nanos, max_cost_nanos, tier_for


def cost_usd(*args, **kwargs) -> Decimal:
    return nanos_to_usd(cost_nanos(*args, **kwargs))


def max_cost_usd(*args, **kwargs) -> Decimal:
    return nanos_to_usd(max_cost_nanos(*args, **kwargs))

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


def test_usd_to_nanos_shortcut_equals_the_decimal_conversion():
    """Floats take a shortcut past Decimal when they are some exact nano-dollar amount; every
    float converts as its shortest repr says, rounded as asked, shortcut or not."""
    import random
    from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

    from thrifty.spend.money import usd_to_nanos

    def by_decimal(x: float, up: bool) -> int:
        rounding = ROUND_CEILING if up else ROUND_HALF_EVEN
        return int((Decimal(repr(x)) * 1_000_000_000).to_integral_value(rounding=rounding))

    rng = random.Random(20261206)
    values = [0.0, -0.0, 1e-9, 5e-10, 1.5e-9, 2.5e-9, -2.5e-9, 0.000123, 0.1 + 0.2, 3_999_999.999999999,
              4_000_000.0, 4_000_000.000000001, 1e12, 1e-12, 123.4567890125]
    for _ in range(20_000):
        values.append(rng.randrange(-4_000_000_000_000_000, 4_000_000_000_000_000) / 1e9)  # nano-exact
        values.append(rng.randrange(0, 10**12) / 1e9 * rng.choice((1, 3, 7e-3)))  # mostly not
        values.append(10 ** rng.uniform(-12, 8) * rng.choice((1, -1)))  # any magnitude
    for x in values:
        for up in (False, True):
            assert usd_to_nanos(x, round_up=up) == by_decimal(x, up), (x, up)


def test_prices_follow_the_model_object_priced():
    """Prices of models without tiers are kept per model object and batch flag: a catalog
    reload's new object with new prices is priced anew, batch prices stay apart."""
    import dataclasses
    import gc

    flat = ModelInfo("flat", "openai", input_cost_per_token=1e-6, output_cost_per_token=2e-6,
                     input_cost_per_token_batches=5e-7, output_cost_per_token_batches=1e-6)
    assert cost_usd(flat, 1000, 1000) == Decimal("0.003")
    assert cost_usd(flat, 1000, 1000, batch=True) == Decimal("0.0015")
    for i in range(1, 50):  # new objects, some possibly where a collected one was
        again = dataclasses.replace(flat, input_cost_per_token=i * 1e-6)
        assert cost_usd(again, 1000, 0) == Decimal(i) / 1000
        del again
        gc.collect()
    assert cost_usd(flat, 1000, 1000) == Decimal("0.003")
    assert max_cost_usd(flat, 1000, 1000) == Decimal("0.003")


def test_integer_pricing_equals_the_decimal_formula():
    """Costs are summed as integers of atto-dollars (Decimal when a price is not a whole number
    of them); either way equal to the Decimal formula, rounded half-even (a hold: up)."""
    import random
    from decimal import ROUND_CEILING, ROUND_HALF_EVEN

    nano = Decimal("0.000000001")

    def d(x: float) -> Decimal:
        return Decimal(repr(x))

    rng = random.Random(7)
    prices = [3e-6, 15e-6, 3e-7, 3.75e-6, 1.25e-7, 7.5e-8, 1e-9, 2.5e-10, 0.0, 1 / 3 * 1e-6, 2 / 7 * 1e-5,
              6.999999999999999e-06, 1.0416666666666667e-07]
    for _ in range(3000):
        inp, out, cached, write = (rng.choice(prices) for _ in range(4))
        tier = PriceTier(5000, *(rng.choice(prices) for _ in range(3))) if rng.random() < 0.5 else None
        info = ModelInfo("r", "x", input_cost_per_token=inp, output_cost_per_token=out,
                         cache_read_input_token_cost=cached, cache_creation_input_token_cost=write,
                         tiers=(tier,) if tier else ())
        prompt = rng.choice((0, 1, 7, 1000, 123_457, 10**7))
        if tier is not None and prompt > tier.above_input_tokens:  # the whole request at the tier
            inp, out, cached = tier.input_cost_per_token, tier.output_cost_per_token, tier.cache_read_input_token_cost
        c = rng.randint(0, prompt)
        w = rng.randint(0, prompt - c)
        completion = rng.choice((0, 1, 999, 64_000))
        exact = (prompt - c - w) * d(inp) + completion * d(out) + c * d(cached) + w * d(write)
        want = exact.quantize(nano, rounding=ROUND_HALF_EVEN)
        assert cost_usd(info, prompt, completion, c, w) == want, (inp, out, cached, write, prompt, completion, c, w)
        assert cost_nanos(info, prompt, completion, c, w) == int(want / nano)
        hold = (prompt * max(d(inp), d(write)) + completion * d(out)).quantize(nano, rounding=ROUND_CEILING)
        assert max_cost_usd(info, prompt, completion) == hold
        assert max_cost_nanos(info, prompt, completion) == int(hold / nano)
    # a tie at half a nano-dollar goes to the even one
    half = ModelInfo("h", "x", input_cost_per_token=5e-10, output_cost_per_token=0.0)
    assert [cost_nanos(half, n, 0) for n in (1, 3, 5)] == [0, 2, 2]
    assert max_cost_nanos(half, 1, 0) == 1
