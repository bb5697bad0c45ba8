"""What thrifty knows about one routable model: prices, limits and origin facts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices that apply once a request's prompt exceeds ``above_input_tokens``."""

    above_input_tokens: int
    input_cost_per_token: float
    output_cost_per_token: float
    cache_read_input_token_cost: float | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as the gateway exposes it.

    Prices are USD per token (the catalog's unit); ``None`` means unknown, and
    a model with an unknown input or output price is not routable unless the
    config sets one.
    """

    name: str  # the name clients use, e.g. "gpt-4o-mini"
    provider: str  # e.g. "openai", "anthropic", "openrouter", "replay"
    upstream_model: str | None = None  # the provider's own name, when different
    origin_country: str | None = None  # ISO 3166 alpha-2 of the developer, e.g. "US", "CN", "FR"
    regions: tuple[str, ...] = ()  # hosting regions, e.g. ("us", "eu")
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    cache_read_input_token_cost: float | None = None
    cache_creation_input_token_cost: float | None = None
    input_cost_per_token_batches: float | None = None
    output_cost_per_token_batches: float | None = None
    tiers: tuple[PriceTier, ...] = field(default=())
    # Capabilities (the catalog's ``supports_*`` facts): True / False where the catalog or the
    # config says so, None where nobody does (unknown, which routing treats as capable).
    supports_function_calling: bool | None = None  # tools, tool_choice
    supports_vision: bool | None = None  # image parts in messages
    supports_response_schema: bool | None = None  # response_format of type json_schema
    supports_reasoning: bool | None = None
    # OpenAI's reasoning-model parameter rules (o1/o3/o4-mini/gpt-5 class): max_completion_tokens
    # instead of max_tokens, no non-default sampling parameters. Derived from supports_reasoning
    # for OpenAI's own models (the catalog's litellm_provider openai/azure) unless the config
    # sets it; applied only on deployments that speak OpenAI's protocol.
    openai_reasoning_params: bool | None = None

    @property
    def priced(self) -> bool:
        return self.input_cost_per_token is not None and self.output_cost_per_token is not None
