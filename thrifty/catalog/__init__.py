"""Models, prices, context windows, provider, origin and region facts."""

from thrifty.catalog.model import ModelInfo, PriceTier

__all__ = ["ModelInfo", "PriceTier"]
