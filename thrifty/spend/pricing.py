"""What a request costs, by the provider's own rules.

Pure functions over :class:`~thrifty.catalog.model.ModelInfo`. Conventions:

* ``prompt_tokens`` is *all* input tokens, OpenAI style: it includes
  ``cached_tokens`` (read from the provider's prompt cache) and
  ``cache_write_tokens`` (written to it). Anthropic reports these three apart;
  add them up before calling.
* Long-context tiers: when ``prompt_tokens`` exceeds a tier's
  ``above_input_tokens`` the whole request is priced at that tier (the highest
  one exceeded), as Gemini and Anthropic bill. A tier without its own cached
  price keeps the base cached price.
* Cached reads cost ``cache_read_input_token_cost`` (the input price when the
  catalog has none); cache writes cost ``cache_creation_input_token_cost``
  (likewise).
* ``batch=True`` uses the batch prices where the catalog has them; without
  them no discount is assumed.
* Results are integer nano-dollars, the ledger's unit, rounded half-even (a
  hold: up), so the cost the gateway reports is exactly the cost the ledger
  sums. Sums are exact integers of atto-dollars (Decimal for a price that is
  not a whole number of them).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from functools import lru_cache

from thrifty.catalog.model import ModelInfo, PriceTier
from thrifty.spend.money import NANOS_PER_USD

__all__ = ["UnpricedModel", "cost_nanos", "max_cost_nanos", "tier_for"]


class UnpricedModel(ValueError):
    """The catalog has no input or output price for the model."""


@lru_cache(maxsize=4096)
def _d(price: float) -> Decimal:
    return Decimal(repr(price))


def tier_for(model: ModelInfo, prompt_tokens: int) -> PriceTier | None:
    """The long-context tier a prompt of this size falls in, if any."""
    chosen: PriceTier | None = None
    for tier in model.tiers:
        if prompt_tokens > tier.above_input_tokens and (
            chosen is None or tier.above_input_tokens > chosen.above_input_tokens
        ):
            chosen = tier
    return chosen


# USD prices per token as integer atto-dollars (1e-18 USD): sums of them are exact integers, and
# a catalog's prices (such as 3e-06 or 1.25e-07) are whole atto-dollars.
_ATTOS_PER_NANO = 10**9
_ATTOS_PER_USD = 10**18

Prices = tuple[Decimal, Decimal, Decimal, Decimal]  # (input, output, cached read, cache write)
# Prices as atto-dollars, or None when one of them is not a whole number of them (then the
# request is priced in Decimal: the same result, slower).
Attos = tuple[int, int, int, int] | None

# (id of a model, batch, the long-context tier applied or -1) -> (that model, its prices):
# every request prices its model two or three times (hold, cost, frontier cost). The model is
# kept, so its id is not reused.
_PRICES: dict[tuple[int, bool, int], tuple[ModelInfo, Prices, Attos]] = {}


def _prices(model: ModelInfo, prompt_tokens: int, batch: bool) -> tuple[Prices, Attos]:
    """The USD per token of this request (input, output, cached read, cache write), as Decimal
    and as atto-dollars."""
    tier = tier_for(model, prompt_tokens) if model.tiers else None
    key = (id(model), batch, -1 if tier is None else tier.above_input_tokens)
    got = _PRICES.get(key)
    if got is not None and got[0] is model:
        return got[1], got[2]
    prices = _priced(model, tier, batch)
    attos = _attos(prices)
    if len(_PRICES) >= 4096:
        _PRICES.clear()
    _PRICES[key] = (model, prices, attos)
    return prices, attos


def _attos(prices: Prices) -> Attos:
    out = []
    for price in prices:
        scaled = price * _ATTOS_PER_USD  # exact: a float's repr has at most 17 digits
        if scaled != scaled.to_integral_value() or scaled < 0:
            return None
        out.append(int(scaled))
    return out[0], out[1], out[2], out[3]


def _priced(model: ModelInfo, tier: PriceTier | None, batch: bool) -> Prices:
    if model.input_cost_per_token is None or model.output_cost_per_token is None:
        raise UnpricedModel(f"model {model.name!r} has no input or output price in the catalog")
    inp, out = model.input_cost_per_token, model.output_cost_per_token
    cached = model.cache_read_input_token_cost
    if tier is not None:
        inp, out = tier.input_cost_per_token, tier.output_cost_per_token
        if tier.cache_read_input_token_cost is not None:
            cached = tier.cache_read_input_token_cost
    elif batch:
        if model.input_cost_per_token_batches is not None:
            inp = model.input_cost_per_token_batches
        if model.output_cost_per_token_batches is not None:
            out = model.output_cost_per_token_batches
    write = model.cache_creation_input_token_cost
    return (
        _d(inp),
        _d(out),
        _d(cached) if cached is not None else _d(inp),
        _d(write) if write is not None else _d(inp),
    )


def _check(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def cost_nanos(
    model: ModelInfo,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    batch: bool = False,
) -> int:
    """The exact cost of one request in nano-dollars, rounded half-even (see the module doc for
    the token conventions)."""
    if not (
        type(prompt_tokens) is int
        and type(completion_tokens) is int
        and type(cached_tokens) is int
        and type(cache_write_tokens) is int
        and min(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens) >= 0
    ):  # the usual case passes in one test; otherwise say which count is wrong
        _check("prompt_tokens", prompt_tokens)
        _check("completion_tokens", completion_tokens)
        _check("cached_tokens", cached_tokens)
        _check("cache_write_tokens", cache_write_tokens)
    fresh = prompt_tokens - cached_tokens - cache_write_tokens
    if fresh < 0:
        raise ValueError(
            f"cached_tokens ({cached_tokens}) + cache_write_tokens ({cache_write_tokens}) "
            f"exceed prompt_tokens ({prompt_tokens})"
        )
    # Long-context tiers (which set their own prices) take precedence over batch prices.
    prices, attos = _prices(model, prompt_tokens, batch)
    if attos is None:
        inp, out, cached, write = prices
        total = fresh * inp + completion_tokens * out + cached_tokens * cached + cache_write_tokens * write
        return int((total * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))
    inp, out, cached, write = attos
    nanos, rest = divmod(
        fresh * inp + completion_tokens * out + cached_tokens * cached + cache_write_tokens * write,
        _ATTOS_PER_NANO,
    )
    if 2 * rest > _ATTOS_PER_NANO or (2 * rest == _ATTOS_PER_NANO and nanos & 1):
        nanos += 1  # half-even
    return nanos


def max_cost_nanos(
    model: ModelInfo, prompt_tokens: int, max_output_tokens: int, batch: bool = False
) -> int:
    """The most a request can cost, in nano-dollars rounded up: what a budget reservation must
    hold.

    Every prompt token is priced at the dearer of the input and cache-write
    prices (a cache write can cost more than a plain read), every possible
    output token at the output price.
    """
    _check("prompt_tokens", prompt_tokens)
    _check("max_output_tokens", max_output_tokens)
    prices, attos = _prices(model, prompt_tokens, batch)
    if attos is None:
        inp, out, _cached, write = prices
        total = prompt_tokens * max(inp, write) + max_output_tokens * out
        return int((total * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))
    inp, out, _cached, write = attos
    nanos, rest = divmod(prompt_tokens * max(inp, write) + max_output_tokens * out, _ATTOS_PER_NANO)
    return nanos + 1 if rest else nanos
