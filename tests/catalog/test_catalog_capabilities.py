"""Capability facts from the catalog (``supports_*``), config overrides, what the gateway
precomputes from them at config load, and what a request needs."""

from __future__ import annotations

import pytest

from thrifty.catalog.loader import Catalog
from thrifty.config import build_config
from thrifty.errors import UsageError
from thrifty.pipeline.schemas import ChatRequest


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog.load(None)


def test_catalog_capabilities_are_carried_typed(cat):
    mini = cat.model("gpt-4o-mini", "openai")
    assert mini.supports_function_calling is True and mini.supports_vision is True
    assert mini.supports_response_schema is True
    o3 = cat.model("o3-mini", "openai")
    assert o3.supports_vision is False and o3.supports_reasoning is True


def test_silence_in_the_catalog_is_unknown_not_false(cat):
    gpt35 = cat.model("gpt-3.5-turbo-1106", "openai")  # the entry says nothing of vision
    assert gpt35.supports_vision is None and gpt35.supports_function_calling is True
    local = cat.model("my-local-llm", "ollama")  # no entry at all
    assert (local.supports_function_calling, local.supports_vision) == (None, None)
    assert local.supports_response_schema is None and local.openai_reasoning_params is None


def test_openai_reasoning_params_only_for_openais_own_reasoning_models(cat):
    assert cat.model("o3-mini", "openai").openai_reasoning_params is True
    assert cat.model("gpt-5-mini", "openai").openai_reasoning_params is True
    assert cat.model("gpt-4o", "openai").openai_reasoning_params is None  # silent: unknown
    # Gemini reasons too, but its OpenAI endpoint takes max_tokens and temperature
    gemini = cat.model("gemini-2.5-flash", "gemini")
    assert gemini.supports_reasoning is True and gemini.openai_reasoning_params is None


def test_config_overrides_capabilities(cat):
    info = cat.model(
        "my-local-llm",
        "ollama",
        overrides={"supports_vision": False, "openai_reasoning_params": True},
    )
    assert info.supports_vision is False and info.openai_reasoning_params is True
    assert cat.model("o3-mini", "openai", overrides={"supports_vision": True}).supports_vision
    off = cat.model("o3-mini", "openai", overrides={"openai_reasoning_params": False})
    assert off.openai_reasoning_params is False
    with pytest.raises(UsageError, match="supports_vision must be true or false"):
        cat.model("x", "ollama", overrides={"supports_vision": "yes"})


def test_config_precomputes_lacks_and_reasoning_deployments(tmp_path):
    doc = {
        "data_dir": str(tmp_path),
        "providers": {
            "oai": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
            "anth": {"type": "anthropic", "base_url": "http://127.0.0.1:9"},
        },
        "models": {
            "o3-mini": {
                "deployments": [
                    {"provider": "oai", "model": "o3-mini"},
                    {"provider": "anth", "model": "o3-mini"},
                ]
            },
            "gpt-4o-mini": {"provider": "oai"},
            "local": {"provider": "oai", "supports_function_calling": False},
        },
    }
    cfg = build_config(doc, env={})
    o3 = cfg.models["o3-mini"]
    assert [d.reasoning_params for d in o3.deployments] == [True, False]
    assert o3.lacks == frozenset({"vision"})
    assert cfg.models["gpt-4o-mini"].lacks == frozenset()
    assert not cfg.models["gpt-4o-mini"].deployments[0].reasoning_params
    assert cfg.models["local"].lacks == frozenset({"function_calling"})


def _needs(**body) -> tuple[str, ...]:
    return ChatRequest({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}).needs


def test_what_a_request_needs():
    tool = {"type": "function", "function": {"name": "f"}}
    assert _needs() == ()
    assert _needs(tools=[tool]) == ("function_calling",)
    assert _needs(tools=[]) == ()
    assert _needs(tool_choice="none") == ()
    assert _needs(tool_choice="required") == ("function_calling",)
    assert _needs(response_format={"type": "json_schema", "json_schema": {"name": "a"}}) == (
        "response_schema",
    )
    assert _needs(response_format={"type": "json_object"}) == ()
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    req = ChatRequest(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "user", "content": [image]},
            ],
            "tools": [tool],
        }
    )
    assert req.needs == ("function_calling", "vision")
