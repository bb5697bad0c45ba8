"""Validate bodies against OpenAI's official response schemas (../shared/specs/openai_schemas.json)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

SPEC = Path(__file__).resolve().parents[3] / "shared" / "specs" / "openai_schemas.json"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` -> a JSON Schema union with null."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            if "type" in node and isinstance(node["type"], str):
                node["type"] = [node["type"], "null"]
                if "enum" in node:
                    node["enum"] = list(node["enum"]) + [None]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@functools.cache
def _components() -> dict[str, Any]:
    if not SPEC.is_file():
        pytest.skip(f"OpenAI schemas not found at {SPEC}")
    return _nullable(json.loads(SPEC.read_text())["components"])


def validate(body: dict[str, Any], schema: str) -> None:
    import jsonschema

    root = {"$ref": f"#/components/schemas/{schema}", "components": _components()}
    jsonschema.validate(body, root, cls=jsonschema.Draft202012Validator)
