"""Validation of request bodies, with OpenAI-style messages naming the offending field.

Hand-written checks on the decoded dict: they cost microseconds, name the exact
``param`` in the error, and leave every field the gateway does not inspect (tools,
response_format, seed, ...) untouched so it passes through to the upstream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from thrifty.catalog.model import ModelInfo
from thrifty.errors import GatewayError, bad_request
from thrifty.jsonlimits import MAX_DEPTH, deeper_than
from thrifty.pipeline import bounds

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Content parts whose billed tokens are bounded by their bytes in the body (audio is billed by
# duration, which its base64 bytes exceed); images have their own rule (thrifty.pipeline.bounds).
_BYTE_BOUNDED_PARTS = frozenset({"text", "image_url", "input_audio", "refusal"})


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400: invalid JSON (lone surrogates included, which
    orjson refuses) or nested deeper than :data:`thrifty.jsonlimits.MAX_DEPTH`."""
    if not raw:
        raise GatewayError(400, "Request body is empty; send a JSON object.", code="invalid_json")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"Request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
    if deeper_than(raw, doc):
        raise GatewayError(
            400,
            f"Request body is nested more than {MAX_DEPTH} levels deep.",
            code="invalid_json",
        )
    return doc


def _type_name(v: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def invalid_type(param: str, expected: str, value: Any) -> GatewayError:
    """OpenAI's error for a parameter of the wrong JSON type."""
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def check_type(body: dict[str, Any], key: str, kinds: tuple[type, ...], desc: str) -> Any:
    """``body[key]`` if absent, null or one of ``kinds`` (a boolean only where ``bool`` is one:
    JSON's true is not a number); else OpenAI's invalid-type error."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise invalid_type(key, desc, value)
    return value


def missing(param: str) -> GatewayError:
    """OpenAI's error for a required parameter that is absent or null."""
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def required(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is None:
        raise missing(key)
    return value


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = check_type(body, key, (int,), "an integer")
    if value is not None and value < 1:
        raise bad_request(f"Invalid '{key}': must be at least 1, got {value}.", param=key)
    return value


def _number_range(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    value = check_type(body, key, (int, float), "a number")
    if value is not None and not (lo <= value <= hi and math.isfinite(value)):
        raise bad_request(
            f"Invalid '{key}': must be between {lo} and {hi}, got {value}.", param=key
        )


def require_model(body: dict[str, Any]) -> str:
    model = required(body, "model")
    if not isinstance(model, str) or not model:
        raise invalid_type("model", "a non-empty string", model)
    return model


def _content_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(
                    f"Invalid '{where}[{i}]': expected an object with a 'type'.",
                    param=f"{where}[{i}]",
                    code="invalid_type",
                )
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(
                        f"Invalid '{where}[{i}].text': expected a string.",
                        param=f"{where}[{i}].text",
                        code="invalid_type",
                    )
                parts.append(text)
            elif part["type"] == "image_url":
                image = part.get("image_url")
                if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                    raise bad_request(
                        f"Invalid '{where}[{i}].image_url': expected an object with a string "
                        "'url'.",
                        param=f"{where}[{i}].image_url",
                        code="invalid_type",
                    )
        return "\n".join(parts)
    raise invalid_type(where, "a string or an array of content parts", content)


def _short(value: Any) -> str:
    """A value for an error message: its repr, cut short (never the whole of a large body)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_function(fn: Any, where: str, *, arguments: bool) -> None:
    """``{"name": str, ...}`` of a tool definition or a tool call (whose ``arguments`` is a JSON
    string), checked because the Anthropic translation reads them."""
    if not isinstance(fn, dict):
        raise invalid_type(where, "an object", fn)
    if not isinstance(fn.get("name"), str):
        raise invalid_type(f"{where}.name", "a string", fn.get("name"))
    if arguments and fn.get("arguments") is not None and not isinstance(fn["arguments"], str):
        raise invalid_type(f"{where}.arguments", "a JSON string", fn["arguments"])
    if (
        not arguments
        and fn.get("parameters") is not None
        and not isinstance(fn["parameters"], dict)
    ):
        raise invalid_type(f"{where}.parameters", "a JSON Schema object", fn["parameters"])


def _check_tools(body: dict[str, Any]) -> None:
    tools = check_type(body, "tools", (list,), "an array")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid_type(f"tools[{i}]", "an object with a string 'type'", tool)
        if tool["type"] == "function":
            _check_function(tool.get("function"), f"tools[{i}].function", arguments=False)


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise invalid_type(where, "an array", calls)
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise invalid_type(f"{where}[{i}]", "an object", call)
        _check_function(call.get("function"), f"{where}[{i}].function", arguments=True)


def _check_tool_choice(choice: Any) -> None:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad_request(
                f"Invalid value for 'tool_choice': {_short(choice)}. Supported values are: "
                "'none', 'auto', 'required' or an object naming a tool.",
                param="tool_choice",
            )
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise invalid_type("tool_choice", "a string or an object with a string 'type'", choice)
    if choice["type"] == "function" or "function" in choice:
        fn = choice.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid_type("tool_choice.function", "an object with a string 'name'", fn)


def _check_stop(stop: Any) -> None:
    if isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid_type("stop", "a string or an array of strings", stop)


def _check_tools_field(body: dict[str, Any]) -> None:
    if body["tools"] is not None:
        _check_tools(body)


def _check_tool_choice_field(body: dict[str, Any]) -> None:
    if body["tool_choice"] is not None:
        _check_tool_choice(body["tool_choice"])


def _check_stop_field(body: dict[str, Any]) -> None:
    if body["stop"] is not None:
        _check_stop(body["stop"])


def _check_stream_options(body: dict[str, Any]) -> None:
    opts = check_type(body, "stream_options", (dict,), "an object")
    if opts is not None:
        check_type(opts, "include_usage", (bool,), "a boolean")


# The optional fields a chat request is checked for, in the order their errors are reported:
# only those present are checked (a request carries few of them).
_OPTIONAL_CHECKS: tuple[tuple[str, Callable[[dict[str, Any]], object]], ...] = (
    ("stream", lambda b: check_type(b, "stream", (bool,), "a boolean")),
    ("max_completion_tokens", lambda b: _positive_int(b, "max_completion_tokens")),
    ("max_tokens", lambda b: _positive_int(b, "max_tokens")),
    ("temperature", lambda b: _number_range(b, "temperature", 0, 2)),
    ("top_p", lambda b: _number_range(b, "top_p", 0, 1)),
    ("n", lambda b: _positive_int(b, "n")),
    ("tools", _check_tools_field),
    ("tool_choice", _check_tool_choice_field),
    ("stop", _check_stop_field),
    ("response_format", lambda b: check_type(b, "response_format", (dict,), "an object")),
    ("stream_options", _check_stream_options),
)
# field -> (its place in that order, its check)
_CHECK_OF = {key: (i, check) for i, (key, check) in enumerate(_OPTIONAL_CHECKS)}
# The usual values of the commonest fields, accepted without their full check: a count (an
# integer of at least 1), a flag (a boolean), or a number from 0 to the bound given.
_COUNT, _FLAG = object(), object()
_NUMBER = (int, float)
_USUAL: dict[str, Any] = {
    "max_tokens": _COUNT,
    "max_completion_tokens": _COUNT,
    "n": _COUNT,
    "stream": _FLAG,
    "temperature": 2,
    "top_p": 1,
}


class ChatRequest:
    """The fields of a chat completion request the gateway acts on; ``body`` is forwarded."""

    __slots__ = (
        "_prompt_bytes",
        "body",
        "images",
        "include_usage",
        "max_tokens",
        "model",
        "n",
        "n_messages",
        "n_tools",
        "needs",
        "opaque",
        "prompt",
        "prompt_chars",
        "stream",
    )

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        model = body.get("model")
        if type(model) is not str or not model:
            model = require_model(body)  # raises the error that says what is wrong
        self.model = model
        messages = body.get("messages")
        if type(messages) is not list or not messages:
            messages = required(body, "messages")
            if not isinstance(messages, list):
                raise invalid_type("messages", "an array", messages)
            if not messages:
                raise bad_request(
                    "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                    param="messages",
                    code="empty_array",
                )
        texts: list[str] = []
        chars = images = 0
        opaque = False
        for i, msg in enumerate(messages):
            if type(msg) is not dict and not isinstance(msg, dict):
                raise invalid_type(f"messages[{i}]", "an object", msg)
            role = msg.get("role")
            if type(role) is not str or role not in ROLES:
                raise bad_request(
                    f"Invalid value for 'messages[{i}].role': {_short(role)}. Supported values are: "
                    "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
                    param=f"messages[{i}].role",
                )
            content = msg.get("content")
            if type(content) is str:
                text = content
            else:
                text = _content_text(content, f"messages[{i}].content")
                if type(content) is list:  # parts checked above
                    for part in content:
                        kind = part["type"]
                        if kind == "image_url":
                            images += 1
                        elif kind not in _BYTE_BOUNDED_PARTS:
                            opaque = True  # e.g. a file part: billed by pages, not by its bytes
            chars += len(text)
            if role == "user" or (role != "assistant" and not texts):
                texts.append(text)
            if msg.get("tool_calls") is not None:
                _check_tool_calls(msg["tool_calls"], f"messages[{i}].tool_calls")
                chars += len(orjson.dumps(msg["tool_calls"]))
        self.n_messages = len(messages)
        self.prompt = texts[-1] if texts else ""
        self.prompt_chars = chars
        self.images = images
        self.opaque = opaque
        self._prompt_bytes = -1  # measured when planning needs it (a cache hit never does)
        # One pass over the body's fields (a request carries few) instead of a test per
        # optional field. The usual values are accepted inline; any other value sends every
        # present field through its full check, in the documented order (so the first error
        # reported does not depend on the body's key order).
        checks: list[tuple[int, Callable[[dict[str, Any]], object]]] | None = None
        unusual = False
        for key, value in body.items():
            got = _CHECK_OF.get(key)
            if got is None:
                continue
            if checks is None:
                checks = [got]
            else:
                checks.append(got)
            if not unusual:
                kind = _USUAL.get(key)
                if kind is _COUNT:
                    unusual = type(value) is not int or value < 1
                elif kind is _FLAG:
                    unusual = type(value) is not bool
                elif kind is not None:
                    unusual = type(value) not in _NUMBER or not 0 <= value <= kind
                else:
                    unusual = True
        if checks is None:
            if images or "functions" in body:
                checks = []
            else:
                self.stream = False
                self.max_tokens: int | None = None
                self.n = 1
                self.include_usage = False
                self.n_tools = 0
                self.needs: tuple[str, ...] = ()
                return
        if unusual:
            checks.sort()
            for _, check in checks:
                check(body)
        self.stream = bool(body.get("stream"))
        self.max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        self.n = body.get("n") or 1  # choices: the output bound is n times max_tokens
        opts = body.get("stream_options")
        self.include_usage = bool(opts.get("include_usage")) if opts else False
        tools = body.get("tools")
        if tools:
            chars += len(orjson.dumps(tools))
            self.prompt_chars = chars
        functions = body.get("functions")
        self.n_tools = (len(tools) if isinstance(tools, list) else 0) + (
            len(functions) if isinstance(functions, list) else 1 if functions else 0
        )
        # Capabilities the serving model needs (thrifty.config.CAPABILITY_NEEDS); usually
        # empty, and then planning skips the capability check altogether.
        choice = body.get("tool_choice")
        fmt = body.get("response_format")
        needs = []
        if tools or functions or (choice is not None and choice != "none"):
            needs.append("function_calling")
        if images:
            needs.append("vision")
        if fmt is not None and fmt.get("type") == "json_schema":
            needs.append("response_schema")
        self.needs = tuple(needs)

    @property
    def prompt_bytes(self) -> int:
        """The size of the whole body the upstream gets. Hardening: the hold's bound is this
        (every field the upstream may bill, known to thrifty or not), not a sum over fields
        someone listed."""
        size = self._prompt_bytes
        if size < 0:
            try:
                size = self._prompt_bytes = len(orjson.dumps(self.body))
            except orjson.JSONEncodeError:  # too deep or not JSON-encodable: parse_json stops these
                raise bad_request(
                    "Request body cannot be forwarded as JSON.", code="invalid_json"
                ) from None
        return size

    @property
    def prompt_tokens(self) -> int:
        """An estimate (4 characters a token, 4 tokens of framing per message): cheap enough for
        every request; the upstream's own count is what gets billed."""
        return self.prompt_chars // 4 + 4 * self.n_messages + 1

    def prompt_tokens_max(self, info: ModelInfo) -> int:
        """An upper bound of the prompt tokens ``info``'s upstream can bill for this request
        (for budget holds): :func:`thrifty.pipeline.bounds.prompt_tokens_max` of the body's size,
        its messages, tools and image parts."""
        return bounds.prompt_tokens_max(
            info,
            self.prompt_bytes,
            messages=self.n_messages,
            images=self.images,
            tools=self.n_tools,
            opaque=self.opaque,
        )


class EmbeddingsRequest:
    __slots__ = ("body", "model", "prompt_tokens", "prompt_tokens_max")

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.model = require_model(body)
        value = required(body, "input")
        # The estimate (4 characters a token) and, for the budget hold, a true maximum: every
        # UTF-8 byte a token, every token id one, plus 2 special tokens per input.
        if isinstance(value, str):
            chars, most = len(value), _utf8_len(value) + 2
        elif isinstance(value, list) and value:
            chars, most = 0, 2  # (+2: a list of token ids is one input)
            for i, item in enumerate(value):
                if isinstance(item, str):
                    chars += len(item)
                    most += _utf8_len(item) + 2
                elif isinstance(item, int) and not isinstance(item, bool):
                    chars, most = chars + 4, most + 1  # one token id of a single input
                elif isinstance(item, list) and all(
                    isinstance(t, int) and not isinstance(t, bool) for t in item
                ):
                    chars, most = chars + 4 * len(item), most + len(item) + 2
                else:
                    raise invalid_type(
                        f"input[{i}]", "a string, a token id or an array of token ids", item
                    )
        else:
            raise bad_request(
                "Invalid 'input': expected a string or a non-empty array.",
                param="input",
                code="invalid_type",
            )
        self.prompt_tokens = chars // 4 + 1
        self.prompt_tokens_max = max(most, self.prompt_tokens)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
