"""Upstream adapters: OpenAI-compatible, Anthropic native and offline replay.

Each adapter takes OpenAI-format chat requests and returns OpenAI-format bodies and
stream chunks, whatever its upstream speaks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thrifty.gateway.config import GatewayConfig
    from thrifty.providers.base import Provider


def build_providers(config: GatewayConfig) -> dict[str, Provider]:
    """One adapter per configured provider (not started: ``start()`` runs inside the event loop)."""
    from thrifty.providers.anthropic_native import AnthropicProvider
    from thrifty.providers.openai_compat import OpenAICompatProvider
    from thrifty.providers.replay import ReplayProvider

    kinds = {
        "openai": OpenAICompatProvider,
        "anthropic": AnthropicProvider,
        "replay": ReplayProvider,
    }
    return {name: kinds[p.type](p) for name, p in config.providers.items()}
