"""OpenAI's Responses API (``POST /v1/responses``) as a third client format.

A Responses request becomes the gateway's chat request (so routing, policies, budgets, retries,
fallbacks and the ledger apply unchanged) and the chat answer becomes a Response object, or,
streamed, the typed ``response.*`` events. thrifty keeps no state: ``store`` is accepted but
nothing is persisted, and what needs stored state (``previous_response_id``, ``conversation``,
``item_reference``) or a hosted tool (web search, file search, ...) is refused with a 400 that
names the parameter. ``reasoning.effort`` and ``text.verbosity`` are passed on (as chat's
``reasoning_effort`` / ``verbosity``) only when the caller names a model; under a routing profile
the router picks the model, which may not take them, so they are dropped there.

Chosen for reach across chat servers: ``max_output_tokens`` is sent as ``max_tokens`` and a
``developer`` message as ``system``; reasoning items in ``input`` (another model's thoughts) are
dropped, and no reasoning items are returned. ``include``, ``truncation``, ``prompt_cache_key``,
``safety_identifier`` and ``stream_options`` are accepted and change nothing here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from thrifty.errors import GatewayError, bad_request
from thrifty.pipeline.schemas import check_type, invalid_type, missing, require_model
from thrifty.providers.base import Usage
from thrifty.providers.translate import copy_sampling

# Every top-level field of the Responses API; anything else is refused like OpenAI does.
_KNOWN = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
        "tool_choice", "parallel_tool_calls", "stream", "stream_options", "user", "metadata",
        "text", "store", "previous_response_id", "conversation", "reasoning", "include",
        "truncation", "background", "prompt", "max_tool_calls", "top_logprobs", "service_tier",
        "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
    }
)  # fmt: skip
# Fields that only a stateful or hosted-tool server can honour: refused when set.
_STATEFUL = {
    "previous_response_id": "thrifty stores no responses; send the whole conversation in 'input'",
    "conversation": "thrifty stores no conversations; send the whole conversation in 'input'",
    "prompt": "thrifty has no stored prompt templates; send 'instructions' and 'input'",
}
_TEXT_PARTS = ("input_text", "output_text")
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _unsupported(param: str, why: str) -> GatewayError:
    return bad_request(
        f"Unsupported parameter: '{param}': {why}.", param=param, code="unsupported_parameter"
    )


def _str(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        if value is None:
            raise missing(f"{where}.{key}")
        raise invalid_type(f"{where}.{key}", "a string", value)
    return value


def _type(obj: Any, at: str) -> str:
    """The ``type`` of a content part or a tool, which must be an object with a string one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise invalid_type(at, "an object with a string 'type'", obj)
    return obj["type"]


def _parts(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: text parts joined, images kept for user messages."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_type(where, "a string or an array of content parts", content)
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = _type(part, at)
        if kind in _TEXT_PARTS:
            out.append({"type": "text", "text": _str(part, "text", at)})
        elif kind == "refusal" and role == "assistant":
            out.append({"type": "text", "text": _str(part, "refusal", at)})
        elif kind == "input_image" and role == "user":
            if part.get("file_id") is not None:
                raise _unsupported(
                    f"{at}.file_id", "thrifty has no file storage; send 'image_url' (a URL or a "
                    "data: URL)"
                )  # fmt: skip
            image: dict[str, Any] = {"url": _str(part, "image_url", at)}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        else:
            raise _unsupported(
                f"{at}.type", f"content of type {kind!r} is not supported in a {role} message "
                "(text, and images in user messages, are)"
            )  # fmt: skip
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)  # plain text reaches every upstream
    return out


def _tool_output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise invalid_type(where, "a string or an array of input_text parts", output)
    texts = []
    for i, part in enumerate(output):
        if not isinstance(part, dict) or part.get("type") != "input_text":
            raise _unsupported(f"{where}[{i}]", "only text tool outputs are supported")
        texts.append(_str(part, "text", f"{where}[{i}]"))
    return "".join(texts)


def _messages(items: Any) -> list[dict[str, Any]]:
    """Responses input items as chat messages; a function_call joins the assistant message
    before it, since chat carries tool calls on the assistant turn."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid_type("input", "a string or an array of input items", items)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_type(at, "an object", item)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(
                    f"Invalid value for '{at}.role': {str(role)[:40]!r}. Supported values are: "
                    "'user', 'assistant', 'system' and 'developer'.",
                    param=f"{at}.role",
                )
            if "content" not in item:
                raise missing(f"{at}.content")
            content = _parts(item["content"], f"{at}.content", role)
            # "developer" is chat's newer name for "system"; not every upstream knows it.
            out.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call = {
                "id": _str(item, "call_id", at),
                "type": "function",
                "function": {
                    "name": _str(item, "name", at),
                    "arguments": _str(item, "arguments", at),
                },
            }
            last = out[-1] if out else None
            if (
                last is not None
                and last["role"] == "assistant"
                and not isinstance(last["content"], list)
            ):
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": _str(item, "call_id", at),
                    "content": _tool_output(item.get("output"), f"{at}.output"),
                }
            )
        elif kind == "reasoning":
            continue  # another model's reasoning; chat upstreams take none (documented)
        elif kind == "item_reference":
            raise _unsupported(at, "thrifty stores no items; send the item itself")
        elif isinstance(kind, str):
            raise _unsupported(
                f"{at}.type", f"input items of type {kind!r} are not supported (messages, "
                "function_call and function_call_output are)"
            )  # fmt: skip
        else:
            raise invalid_type(f"{at}.type", "a string", kind)
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid_type("tools", "an array", tools)
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        kind = _type(tool, at)
        if kind != "function":
            raise _unsupported(
                f"{at}.type", f"the hosted tool {kind!r} is not available through thrifty "
                "(its upstreams speak chat completions); use function tools"
            )  # fmt: skip
        fn: dict[str, Any] = {"name": _str(tool, "name", at)}
        if tool.get("description") is not None:
            fn["description"] = _str(tool, "description", at)
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise invalid_type(f"{at}.parameters", "a JSON Schema object", params)
        fn["parameters"] = params or {"type": "object", "properties": {}}
        if tool.get("strict") is not None:
            if not isinstance(tool["strict"], bool):
                raise invalid_type(f"{at}.strict", "a boolean", tool["strict"])
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> str | dict[str, Any]:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _str(choice, "name", "tool_choice")}}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        raise _unsupported(
            "tool_choice", f"a tool choice of type {choice['type']!r} is not supported ('none', "
            "'auto', 'required' or a function are)"
        )  # fmt: skip
    raise bad_request(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
        '{"type": "function", "name": ...}.',
        param="tool_choice",
    )


def _text_format(text: Any) -> tuple[dict[str, Any] | None, dict[str, Any], str | None]:
    """(chat response_format, the format to echo, verbosity) of the ``text`` parameter."""
    if not isinstance(text, dict):
        raise invalid_type("text", "an object", text)
    fmt = text.get("format")
    verbosity = text.get("verbosity")
    if verbosity is not None and verbosity not in ("low", "medium", "high"):
        raise bad_request(
            "Invalid value for 'text.verbosity': expected 'low', 'medium' or 'high'.",
            param="text.verbosity",
        )
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None, {"type": "text"}, verbosity
    if not isinstance(fmt, dict):
        raise invalid_type("text.format", "an object", fmt)
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}, {"type": "json_object"}, verbosity
    if fmt.get("type") == "json_schema":
        name = _str(fmt, "name", "text.format")
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise invalid_type("text.format.schema", "a JSON Schema object", schema)
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return (
            {"type": "json_schema", "json_schema": spec},
            {"type": "json_schema", **spec},
            verbosity,
        )
    raise bad_request(
        "Invalid value for 'text.format.type': expected 'text', 'json_object' or 'json_schema'.",
        param="text.format.type",
    )


class ResponsesRequest:
    """One Responses API request: ``chat`` is the chat completion request the gateway runs;
    the rest is what the Response object reports back."""

    __slots__ = ("chat", "created_at", "echo", "id", "stream")

    def __init__(
        self, body: dict[str, Any], request_id: str, is_profile: Callable[[str], bool]
    ) -> None:
        self.id = "resp_" + request_id.removeprefix("req_")
        self.created_at = int(time.time())
        self.stream: ResponsesStream | None = None
        for key in body:
            if key not in _KNOWN:
                raise bad_request(
                    f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter"
                )
        for key, why in _STATEFUL.items():
            if body.get(key) is not None:
                raise _unsupported(key, why)
        if body.get("background"):
            raise _unsupported("background", "thrifty answers in the foreground only")
        if body.get("top_logprobs"):
            raise _unsupported("top_logprobs", "thrifty does not return log probabilities")
        if body.get("service_tier") not in (None, "auto", "default"):
            raise _unsupported("service_tier", "only 'auto' and 'default' are supported")
        include = check_type(body, "include", (list,), "an array of strings") or []
        if "message.output_text.logprobs" in include:
            raise _unsupported("include", "thrifty does not return log probabilities")
        model = require_model(body)
        instructions = check_type(body, "instructions", (str,), "a string")
        messages = [{"role": "system", "content": instructions}] if instructions else []
        if body.get("input") is None:
            if not messages:
                raise missing("input")
        else:
            added = _messages(body["input"])
            if not added and not messages:
                raise bad_request(
                    "Invalid 'input': empty array. Expected an array with minimum length 1.",
                    param="input",
                    code="empty_array",
                )
            messages += added
        chat: dict[str, Any] = {"model": model, "messages": messages}
        max_out = check_type(body, "max_output_tokens", (int,), "an integer")
        if max_out is not None:
            if max_out < 1:
                raise bad_request(
                    f"Invalid 'max_output_tokens': must be at least 1, got {max_out}.",
                    param="max_output_tokens",
                )
            chat["max_tokens"] = max_out  # the one name every chat server takes
        copy_sampling(body, chat)
        tools = _tools(body["tools"]) if body.get("tools") is not None else []
        if tools:
            chat["tools"] = tools
        if body.get("tool_choice") is not None:
            choice = _tool_choice(body["tool_choice"])
            if tools:
                chat["tool_choice"] = choice
            elif choice not in ("none", "auto"):  # chat servers refuse a choice without tools
                raise bad_request(
                    "Invalid 'tool_choice': it requires a tool, but 'tools' is empty.",
                    param="tool_choice",
                )
        parallel = check_type(body, "parallel_tool_calls", (bool,), "a boolean")
        if parallel is not None and tools:
            chat["parallel_tool_calls"] = parallel
        user = check_type(body, "user", (str,), "a string")
        if user is not None:
            chat["user"] = user
        for key in (
            "safety_identifier",
            "prompt_cache_key",
            "prompt_cache_retention",
            "truncation",
        ):  # accepted; nothing to pass to a chat upstream
            check_type(body, key, (str,), "a string")
        check_type(body, "stream_options", (dict,), "an object")
        check_type(body, "store", (bool,), "a boolean")
        check_type(body, "max_tool_calls", (int,), "an integer")
        metadata = check_type(body, "metadata", (dict,), "an object of strings")
        if metadata and not all(isinstance(v, str) for v in metadata.values()):
            raise invalid_type("metadata", "an object of strings", metadata)
        text_echo: dict[str, Any] = {"format": {"type": "text"}}
        verbosity = None
        if body.get("text") is not None:
            response_format, text_echo["format"], verbosity = _text_format(body["text"])
            if response_format is not None:
                chat["response_format"] = response_format
            text_echo["verbosity"] = verbosity
        reasoning = check_type(body, "reasoning", (dict,), "an object") or {}
        effort = reasoning.get("effort")
        if effort is not None and not isinstance(effort, str):
            raise invalid_type("reasoning.effort", "a string", effort)
        if not is_profile(model):  # a routed model may not take these knobs
            if effort is not None:
                chat["reasoning_effort"] = effort
            if verbosity is not None:
                chat["verbosity"] = verbosity
        self.chat = chat
        self.echo: dict[str, Any] = {
            "instructions": instructions,
            "max_output_tokens": max_out,
            "max_tool_calls": body.get("max_tool_calls"),
            "metadata": metadata or {},
            "parallel_tool_calls": True if parallel is None else parallel,
            "previous_response_id": None,
            "reasoning": {"effort": effort, "summary": None},
            "store": False,  # nothing is persisted, whatever was asked
            "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
            "text": text_echo,
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": [_echo_tool(t) for t in tools],
            "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
            "truncation": body.get("truncation") or "disabled",
            "user": user,
        }

    def _response(self, model: str, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "model": model,
            "output": output,
            "usage": None,
            **self.echo,
        }

    def response(self, chat: dict[str, Any], model: str, usage: Usage) -> dict[str, Any]:
        """The Response object for a chat completion ``chat`` served by ``model``."""
        choice = (chat.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        cut = _INCOMPLETE.get(choice.get("finish_reason") or "stop")
        status = "incomplete" if cut else "completed"
        output = []
        content = message.get("content")
        if isinstance(content, list):  # some servers send parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts = []
        if content:
            parts.append(_text_part(content))
        if message.get("refusal"):
            parts.append({"type": "refusal", "refusal": message["refusal"]})
        if parts:
            output.append(
                {"id": self._item_id("msg", 0), "type": "message", "role": "assistant",
                 "status": status, "content": parts}
            )  # fmt: skip
        for i, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") or {}
            output.append(
                {"id": self._item_id("fc", i + 1), "type": "function_call", "status": "completed",
                 "call_id": call.get("id") or self._item_id("call", i + 1),
                 "name": fn.get("name") or "", "arguments": fn.get("arguments") or ""}
            )  # fmt: skip
        resp = self._response(model, status, output)
        if cut:
            resp["incomplete_details"] = {"reason": cut}
        reasoning = ((chat.get("usage") or {}).get("completion_tokens_details") or {}).get(
            "reasoning_tokens"
        )
        resp["usage"] = _usage(usage, reasoning or 0)
        return resp

    def _item_id(self, prefix: str, n: int) -> str:
        return f"{prefix}_{self.id.removeprefix('resp_')}{n:02x}"

    def start_stream(self, model: str) -> ResponsesStream:
        self.stream = ResponsesStream(self, model)
        return self.stream


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool["function"]
    return {
        "type": "function",
        "name": fn["name"],
        "description": fn.get("description"),
        "parameters": fn["parameters"],
        "strict": fn.get("strict"),
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class ResponsesStream:
    """Chat completion chunks in, Responses SSE events (bytes) out, in the order and with the
    ``sequence_number`` the SDK's stream accumulator checks. Output items stay open until the
    end, so tool-call deltas may interleave; ``end``/``fail`` close the stream."""

    def __init__(self, req: ResponsesRequest, model: str) -> None:
        self.req = req
        self.model = model
        self.seq = 0
        self.started = False
        self.items: list[dict[str, Any]] = []  # output items, as they will be reported
        self.index: dict[str, int] = {}  # item id -> output_index
        self.message: dict[str, Any] | None = None  # the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item
        self.finish: str | None = None

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        resp = self.req._response(self.model, "in_progress", [])
        return self._event("response.created", {"response": resp}) + self._event(
            "response.in_progress", {"response": resp}
        )

    def _add(self, item: dict[str, Any]) -> bytes:
        self.index[item["id"]] = len(self.items)
        self.items.append(item)
        shown = {**item, "content": []} if item["type"] == "message" else {**item, "arguments": ""}
        return self._event(
            "response.output_item.added", {"output_index": len(self.items) - 1, "item": shown}
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = self._start()
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text and isinstance(text, str):
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _text(self, text: str) -> bytes:
        out = b""
        if self.message is None:
            self.message = {
                "id": self.req._item_id("msg", 0), "type": "message", "role": "assistant",
                "status": "in_progress", "content": [_text_part("")],
            }  # fmt: skip
            out += self._add(self.message)
            out += self._event(
                "response.content_part.added",
                {"item_id": self.message["id"], "output_index": len(self.items) - 1,
                 "content_index": 0, "part": _text_part("")},
            )  # fmt: skip
        self.message["content"][0]["text"] += text
        return out + self._event(
            "response.output_text.delta",
            {"item_id": self.message["id"], "output_index": self.index[self.message["id"]],
             "content_index": 0, "delta": text, "logprobs": []},
        )  # fmt: skip

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        fn = call.get("function") or {}
        index = call.get("index", 0)
        item = self.calls.get(index)
        if item is None:
            n = len(self.calls) + 1
            item = self.calls[index] = {
                "id": self.req._item_id("fc", n), "type": "function_call", "status": "in_progress",
                "call_id": call.get("id") or self.req._item_id("call", n),
                "name": fn.get("name") or "", "arguments": "",
            }  # fmt: skip
            out += self._add(item)
        args = fn.get("arguments")
        if args and isinstance(args, str):
            item["arguments"] += args
            out += self._event(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": self.index[item["id"]], "delta": args},
            )
        return out

    def _close_items(self, status: str) -> bytes:
        out = b""
        for i, item in enumerate(self.items):
            item["status"] = status
            if item["type"] == "message":
                part = item["content"][0]
                ref = {"item_id": item["id"], "output_index": i, "content_index": 0}
                out += self._event(
                    "response.output_text.done", {**ref, "text": part["text"], "logprobs": []}
                )
                out += self._event("response.content_part.done", {**ref, "part": part})
            else:
                out += self._event(
                    "response.function_call_arguments.done",
                    {"item_id": item["id"], "output_index": i, "arguments": item["arguments"]},
                )
            out += self._event("response.output_item.done", {"output_index": i, "item": item})
        return out

    def end(self, usage: Usage) -> bytes:
        """The closing events, ending with ``response.completed`` (``response.incomplete`` when
        the answer was cut by the token limit or a content filter)."""
        cut = _INCOMPLETE.get(self.finish or "stop")
        status = "incomplete" if cut else "completed"
        out = self._start() + self._close_items(status)
        resp = self.req._response(self.model, status, self.items)
        resp["usage"] = _usage(usage)
        if cut:
            resp["incomplete_details"] = {"reason": cut}
        return out + self._event(f"response.{status}", {"response": resp})

    def fail(self, message: str, usage: Usage | None = None) -> bytes:
        """A stream that cannot finish: ``response.failed`` (the terminal event of the API),
        then an ``error`` event whose nested ``error`` makes the openai SDK raise ``APIError``."""
        resp = self.req._response(self.model, "failed", self.items)
        for item in self.items:
            item["status"] = "incomplete"
        resp["error"] = {"code": "server_error", "message": message}
        if usage is not None:
            resp["usage"] = _usage(usage)
        err = {"code": "server_error", "message": message, "param": None}
        return (
            self._start()
            + self._event("response.failed", {"response": resp})
            + self._event("error", {**err, "error": {**err, "type": "server_error"}})
        )
