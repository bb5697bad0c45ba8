"""OpenAI Chat Completions <-> Anthropic Messages, both ways: requests, responses, stream
events and usage.

Used twice: the Anthropic adapter speaks Messages to Anthropic on behalf of OpenAI-format
callers, and the gateway's ``/v1/messages`` endpoint serves Anthropic-format callers from
any upstream (the pipeline itself runs on OpenAI's format).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from thrifty.errors import GatewayError, bad_request

FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
STOP_TO_FINISH = {
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        p["text"]
        for p in content
        if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
    )


# -- OpenAI request -> Anthropic request -----------------------------------------------------


def _anthropic_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, data = url[5:].split(";base64,", 1)
                blocks.append(
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": media, "data": data},
                    }
                )
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def openai_to_anthropic_request(
    body: dict[str, Any], default_max_tokens: int = 4096
) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for msg in body["messages"]:
        role = msg.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(msg.get("content")))
        elif role == "user":
            push("user", _anthropic_blocks(msg.get("content")))
        elif role == "assistant":
            blocks = _anthropic_blocks(msg.get("content"))
            blocks += [_tool_use_block(call) for call in msg.get("tool_calls") or []]
            push("assistant", blocks)
        elif role in ("tool", "function"):
            push(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": msg.get("tool_call_id") or msg.get("name"),
                        "content": _text_of(msg.get("content")),
                    }
                ],
            )
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_tokens")
        or body.get("max_completion_tokens")
        or default_max_tokens,
    }
    if system:
        out["system"] = "\n\n".join(system)
    if body.get("temperature") is not None:
        out["temperature"] = min(1.0, float(body["temperature"]))
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters")
                or {"type": "object", "properties": {}},
            }
            for t in body["tools"]
            if t.get("type") == "function"
        ]
    choice = body.get("tool_choice")
    if choice == "required":
        out["tool_choice"] = {"type": "any"}
    elif choice == "auto":
        out["tool_choice"] = {"type": "auto"}
    elif choice == "none":
        out["tool_choice"] = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("function"):
        out["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    if body.get("stream"):
        out["stream"] = True
    return out


# -- Anthropic response -> OpenAI response ---------------------------------------------------


def anthropic_usage_to_openai(usage: dict[str, Any]) -> dict[str, Any]:
    cached = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + written
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def anthropic_to_openai_response(msg: dict[str, Any]) -> dict[str, Any]:
    text, calls = [], []
    for block in msg.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(_tool_call(block))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text) if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(msg.get("id", "")).removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOP_TO_FINISH.get(msg.get("stop_reason") or "end_turn", "stop"),
            }
        ],
        "usage": anthropic_usage_to_openai(msg.get("usage") or {}),
    }


class AnthropicStreamToOpenAI:
    """Turns Anthropic stream events into OpenAI chunks (one event may give zero or one chunk)."""

    def __init__(self) -> None:
        self.id = "chatcmpl-"
        self.model = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def feed(self, event: dict[str, Any]) -> Iterator[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            msg = event.get("message") or {}
            self.id = "chatcmpl-" + str(msg.get("id", "")).removeprefix("msg_")
            self.model = msg.get("model", "")
            self.usage = dict(msg.get("usage") or {})
            yield self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                i = self.tool_index.setdefault(event.get("index", 0), len(self.tool_index))
                yield self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": block.get("id"),
                                "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""},
                            }
                        ]
                    }
                )
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield self._chunk({"content": delta.get("text", "")})
            elif delta.get("type") == "input_json_delta":
                i = self.tool_index.get(event.get("index", 0), 0)
                yield self._chunk(
                    {
                        "tool_calls": [
                            {"index": i, "function": {"arguments": delta.get("partial_json", "")}}
                        ]
                    }
                )
        elif kind == "message_delta":
            self.usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            stop = (event.get("delta") or {}).get("stop_reason")
            yield self._chunk({}, STOP_TO_FINISH.get(stop or "end_turn", "stop"))
        elif kind == "message_stop":
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = anthropic_usage_to_openai(self.usage)
            yield chunk


# -- Anthropic request -> OpenAI request (the /v1/messages endpoint) -------------------------


def _check_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad_request(
            f"{param}: Input should be a valid list", param=param, code="invalid_type"
        )
    return value


def copy_sampling(src: dict[str, Any], chat: dict[str, Any]) -> None:
    """The fields the Anthropic and Responses formats share with chat under the same names,
    copied into the chat request where set (the chat request's own checks then apply)."""
    for key in ("temperature", "top_p", "stream"):
        if src.get(key) is not None:
            chat[key] = src[key]


def _invalid(param: str, expected: str) -> GatewayError:
    return bad_request(f"{param}: Input should be {expected}", param=param, code="invalid_type")


def _text_block(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{param}.text", "a valid string")
    return text


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    parts = []
    for i, block in enumerate(_check_list(system, "system")):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(f"system.{i}", "a text block")
        parts.append(_text_block(block, f"system.{i}"))
    return "".join(parts)


def _image_url(block: dict[str, Any], param: str) -> str:
    src = block.get("source")
    if not isinstance(src, dict):
        raise _invalid(f"{param}.source", "a valid dictionary")
    if src.get("type") == "url" or "url" in src:
        if not isinstance(src.get("url"), str):
            raise _invalid(f"{param}.source.url", "a valid string")
        return src["url"]
    if not isinstance(src.get("media_type"), str) or not isinstance(src.get("data"), str):
        raise _invalid(f"{param}.source", "an image source with 'media_type' and 'data' strings")
    return f"data:{src['media_type']};base64,{src['data']}"


def _tool_result_text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return _text_of(_check_list(content, f"{param}.content"))


def _checked_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(_check_list(tools, "tools")):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _invalid(f"tools.{i}.name", "a valid string")
        schema = t.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise _invalid(f"tools.{i}.input_schema", "a valid dictionary")
        out.append(
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": schema,
                },
            }
        )
    return out


def _number(body: dict[str, Any], key: str, hi: float) -> Any:
    value = body.get(key)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi
    ):
        raise bad_request(f"{key}: Input should be a number from 0 to {hi}", param=key)
    return value


def anthropic_to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """Validates the Messages-API fields it translates; errors name the field like Anthropic's do."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(
            "model: Field required" if model is None else "model: Input should be a valid string",
            param="model",
            code="invalid_type",
        )
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad_request(
            "max_tokens: Field required", param="max_tokens", code="missing_required_parameter"
        )
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad_request(
            "max_tokens: Input should be a positive integer",
            param="max_tokens",
            code="invalid_type",
        )
    if "messages" not in body:
        raise bad_request(
            "messages: Field required", param="messages", code="missing_required_parameter"
        )
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system)
        if text:
            messages.append({"role": "system", "content": text})
    for i, msg in enumerate(_check_list(body["messages"], "messages")):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise bad_request(
                f"messages.{i}.role: Input should be 'user' or 'assistant'",
                param=f"messages.{i}.role",
            )
        content = msg.get("content")
        if isinstance(content, str):
            messages.append({"role": msg["role"], "content": content})
            continue
        blocks = _check_list(content, f"messages.{i}.content")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append(
                    {"type": "text", "text": _text_block(block, f"messages.{i}.content.{j}")}
                )
            elif kind == "image":
                url = _image_url(block, f"messages.{i}.content.{j}")
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_use":
                where = f"messages.{i}.content.{j}"
                if not isinstance(block.get("name"), str):
                    raise _invalid(f"{where}.name", "a valid string")
                if block.get("input") is not None and not isinstance(block["input"], dict):
                    raise _invalid(f"{where}.input", "a valid dictionary")
                calls.append(_tool_call(block))
            elif kind == "tool_result":
                result = _tool_result_text(block.get("content"), f"messages.{i}.content.{j}")
                messages.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": result}
                )
            elif kind is None:
                raise bad_request(
                    f"messages.{i}.content: each block needs a 'type'",
                    param=f"messages.{i}.content",
                )
        if parts or calls:
            out: dict[str, Any] = {"role": msg["role"], "content": parts or None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
    body_out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    _number(body, "temperature", 1)  # Anthropic's range (OpenAI's goes to 2)
    copy_sampling(body, body_out)
    stop = body.get("stop_sequences")
    if stop is not None:
        if not all(isinstance(s, str) for s in _check_list(stop, "stop_sequences")):
            raise _invalid("stop_sequences", "a list of strings")
        if stop:
            body_out["stop"] = stop
    if body.get("tools") is not None:
        tools = _checked_tools(body["tools"])
        if tools:
            body_out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind in ("auto", "none"):
            body_out["tool_choice"] = kind
        elif kind == "any":
            body_out["tool_choice"] = "required"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            body_out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise _invalid(
                "tool_choice", "an object of type 'auto', 'any', 'none' or 'tool' (with a 'name')"
            )
    return body_out


# -- OpenAI response -> Anthropic response (the /v1/messages endpoint) -----------------------


def openai_usage_to_anthropic(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic ``tool_use`` block as an OpenAI tool call (the inverse of _tool_use_block)."""
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {
            "name": block.get("name"),
            "arguments": orjson.dumps(block.get("input") or {}).decode(),
        },
    }


def _tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as an Anthropic ``tool_use`` block (unparsable arguments become {})."""
    fn = call.get("function") or {}
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        args = {}
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args}


def openai_to_anthropic_response(resp: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    content += [_tool_use_block(call) for call in message.get("tool_calls") or []]
    return {
        "id": "msg_" + str(resp.get("id", "")).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": FINISH_TO_STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(resp.get("usage")),
    }


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class OpenAIStreamToAnthropic:
    """Turns OpenAI chunks into Anthropic SSE events (bytes), in the order the SDK expects."""

    def __init__(self, model: str, input_tokens: int) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.started = False
        self.block: int = -1
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.block += 1
        self.block_kind = kind
        return out + sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": self.block, "content_block": block},
        )

    def _close(self) -> bytes:
        if self.block_kind is None:
            return b""
        self.block_kind = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if not self.started:
            self.started = True
            msg_id = "msg_" + str(chunk.get("id", "")).removeprefix("chatcmpl-")
            out += sse_event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
                    },
                },
            )
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.block_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += sse_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self.block,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id") or call.get("index", 0) not in self.tool_blocks:
                    out += self._open(
                        "tool_use",
                        {
                            "type": "tool_use",
                            "id": call.get("id"),
                            "name": fn.get("name"),
                            "input": {},
                        },
                    )
                    self.tool_blocks[call.get("index", 0)] = self.block
                if fn.get("arguments"):
                    out += sse_event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": self.block,
                            "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                        },
                    )
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        out = self._close()
        usage = openai_usage_to_anthropic(self.usage) if self.usage else {"output_tokens": 0}
        out += sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": FINISH_TO_STOP.get(self.finish or "stop", "end_turn"),
                    "stop_sequence": None,
                },
                "usage": {k: v for k, v in usage.items() if k != "cache_creation_input_tokens"},
            },
        )
        return out + sse_event("message_stop", {"type": "message_stop"})
