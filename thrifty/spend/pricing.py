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
* Results are Decimal USD rounded half-even to the nano-dollar, the ledger's
  unit, so the cost the gateway reports is exactly the cost the ledger sums.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache

from thrifty.catalog.model import ModelInfo, PriceTier
from thrifty.spend.money import NANO

__all__ = ["UnpricedModel", "cost_usd", "max_cost_usd", "tier_for"]


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


# (id of a model without tiers, batch) -> (that model, its _prices): every request prices its
# model two or three times (hold, cost, frontier cost). The model is kept, so its id is not reused.
_TIERLESS: dict[tuple[int, bool], tuple[ModelInfo, tuple[Decimal, Decimal, Decimal, Decimal]]] = {}


def _prices(model: ModelInfo, prompt_tokens: int, batch: bool) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(input, output, cached read, cache write) USD per token for this request."""
    if model.tiers:
        return _priced(model, prompt_tokens, batch)
    got = _TIERLESS.get((id(model), batch))
    if got is not None and got[0] is model:
        return got[1]
    prices = _priced(model, prompt_tokens, batch)
    if len(_TIERLESS) >= 4096:
        _TIERLESS.clear()
    _TIERLESS[id(model), batch] = (model, prices)
    return prices


def _priced(model: ModelInfo, prompt_tokens: int, batch: bool) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    if model.input_cost_per_token is None or model.output_cost_per_token is None:
        raise UnpricedModel(f"model {model.name!r} has no input or output price in the catalog")
    inp, out = model.input_cost_per_token, model.output_cost_per_token
    cached = model.cache_read_input_token_cost
    tier = tier_for(model, prompt_tokens)
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


def cost_usd(
    model: ModelInfo,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    batch: bool = False,
) -> Decimal:
    """The exact cost of one request in USD (see the module doc for the token conventions)."""
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
    inp, out, cached, write = _prices(model, prompt_tokens, batch)
    total = fresh * inp + completion_tokens * out
    if cached_tokens:  # (exact sums: leaving out a zero term changes nothing)
        total += cached_tokens * cached
    if cache_write_tokens:
        total += cache_write_tokens * write
    return total.quantize(NANO, rounding=ROUND_HALF_EVEN)


def max_cost_usd(
    model: ModelInfo, prompt_tokens: int, max_output_tokens: int, batch: bool = False
) -> Decimal:
    """The most a request can cost: what a budget reservation must hold.

    Every prompt token is priced at the dearer of the input and cache-write
    prices (a cache write can cost more than a plain read), every possible
    output token at the output price.
    """
    _check("prompt_tokens", prompt_tokens)
    _check("max_output_tokens", max_output_tokens)
    inp, out, _cached, write = _prices(model, prompt_tokens, batch)
    total = prompt_tokens * max(inp, write) + max_output_tokens * out
    return total.quantize(NANO, rounding="ROUND_CEILING")
