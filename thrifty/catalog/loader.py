"""Load the price catalog: the vendored LiteLLM snapshot (or a refreshed copy) plus overrides.

The catalog is keyed by model name as LiteLLM spells it (``gpt-4o-mini``,
``anthropic/claude-...``, ``openrouter/...``). The gateway looks up its configured
models here (by their upstream name, with and without a provider prefix) and lets
the config override any field, so a model with no public price can still be
routed once the operator sets one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from thrifty.catalog.model import ModelInfo
from thrifty.catalog.origins import origin_of, regions_of
from thrifty.errors import UsageError

PACKAGED_SNAPSHOT = Path(__file__).parent / "data" / "model_prices.json"
SNAPSHOT_NAME = "model_prices.json"
PUBLIC_URL = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
)

_FIELDS = {f.name for f in dataclasses.fields(ModelInfo)}
CAPABILITIES = (
    "supports_function_calling",
    "supports_vision",
    "supports_response_schema",
    "supports_reasoning",
)
# The catalog's providers whose reasoning models follow OpenAI's parameter rules.
_OPENAI_PROVIDERS = frozenset({"openai", "azure"})


def _flag(value: Any) -> bool | None:
    """A catalog capability: only an explicit true/false counts; anything else is unknown."""
    return value if isinstance(value, bool) else None


class Catalog:
    """Raw price entries by name, with lookups that build :class:`ModelInfo`."""

    def __init__(self, entries: Mapping[str, Mapping[str, Any]], source: str = "") -> None:
        self.entries = entries
        self.source = source

    @classmethod
    def load(cls, data_dir: Path | None = None) -> Catalog:
        """The refreshed snapshot in ``data_dir`` if ``catalog update`` wrote one, else the packaged one."""
        path = PACKAGED_SNAPSHOT
        if data_dir is not None and (data_dir / SNAPSHOT_NAME).is_file():
            path = data_dir / SNAPSHOT_NAME
        try:
            entries = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UsageError(f"cannot read price catalog {path}: {exc}") from None
        entries.pop("sample_spec", None)
        return cls(entries, str(path))

    def lookup(self, name: str, provider: str | None = None) -> Mapping[str, Any] | None:
        for key in (name, f"{provider}/{name}" if provider else None, name.rsplit("/", 1)[-1]):
            if key and key in self.entries:
                return self.entries[key]
        return None

    def model(
        self,
        name: str,
        provider: str,
        upstream_model: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ModelInfo:
        """``name`` as the gateway exposes it, priced from the catalog entry of its upstream model."""
        entry = self.lookup(upstream_model or name, provider) or {}
        fields: dict[str, Any] = {
            "name": name,
            "provider": provider,
            "upstream_model": upstream_model,
            "origin_country": origin_of(upstream_model or name, provider),
            "regions": regions_of(provider),
            "context_window": entry.get("max_input_tokens") or entry.get("max_tokens"),
            "max_output_tokens": entry.get("max_output_tokens"),
        }
        for key in (
            "input_cost_per_token",
            "output_cost_per_token",
            "cache_read_input_token_cost",
            "cache_creation_input_token_cost",
            "input_cost_per_token_batches",
            "output_cost_per_token_batches",
        ):
            fields[key] = entry.get(key)
        for key in CAPABILITIES:  # absent from the entry: unknown (the catalog is not exhaustive)
            fields[key] = _flag(entry.get(key))
        for key, value in (overrides or {}).items():
            if key not in _FIELDS:
                raise UsageError(f"model {name!r}: unknown catalog field {key!r}")
            if (key in CAPABILITIES or key == "openai_reasoning_params") and not (
                value is None or isinstance(value, bool)
            ):
                raise UsageError(f"model {name!r}: {key} must be true or false, not {value!r}")
            fields[key] = tuple(value) if key == "regions" else value
        if "openai_reasoning_params" not in (overrides or {}):
            reasoning = fields["supports_reasoning"]
            if entry.get("litellm_provider") in _OPENAI_PROVIDERS and reasoning is not None:
                fields["openai_reasoning_params"] = reasoning
        return ModelInfo(**fields)


def fetch_update(data_dir: Path, url: str = PUBLIC_URL, timeout: float = 30.0) -> tuple[Path, int]:
    """Download the public price map into ``data_dir`` (validated before it replaces the old one)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    try:
        entries = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{url} did not return JSON: {exc}") from None
    if not isinstance(entries, dict) or len(entries) < 100:
        raise UsageError(f"{url} returned an unexpected document ({type(entries).__name__})")
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (SNAPSHOT_NAME + ".tmp")
    tmp.write_bytes(body)
    target = data_dir / SNAPSHOT_NAME
    tmp.replace(target)
    return target, len(entries)
