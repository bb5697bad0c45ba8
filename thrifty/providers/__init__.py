"""Upstream adapters: OpenAI-compatible, Anthropic native, offline replay, the
offline stand-in (offline-echo) and a local llama.cpp model.

Each adapter takes OpenAI-format chat requests and returns OpenAI-format bodies and
stream chunks, whatever its upstream speaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thrifty.providers.base import Provider
    from thrifty.providers.config import ProviderConfig


def build_providers(providers: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    """One adapter per configured provider (not started: ``start()`` runs inside the event loop)."""
    from thrifty.providers.anthropic_native import AnthropicProvider
    from thrifty.providers.local_llm import LlamaProvider
    from thrifty.providers.offline import OfflineEchoProvider
    from thrifty.providers.openai_compat import OpenAICompatProvider
    from thrifty.providers.replay import ReplayProvider

    kinds = {
        "openai": OpenAICompatProvider,
        "anthropic": AnthropicProvider,
        "replay": ReplayProvider,
        "offline": OfflineEchoProvider,
        "llama": LlamaProvider,
    }
    return {name: kinds[p.type](p) for name, p in providers.items()}
