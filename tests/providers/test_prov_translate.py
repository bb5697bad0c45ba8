"""OpenAI <-> Anthropic translation, both ways, including stream events and usage."""

from __future__ import annotations

import anthropic
import orjson
from anthropic.types import Message

from thrifty.providers.translate import (
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_openai_request_to_anthropic():
    body = {
        "model": "claude",
        "max_tokens": 100,
        "temperature": 1.5,
        "stop": "END",
        "tools": [TOOL],
        "tool_choice": "required",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "Thanks"},
        ],
    }
    out = openai_to_anthropic_request(body)
    assert out["system"] == "Be terse." and out["max_tokens"] == 100 and out["temperature"] == 1.0
    assert out["stop_sequences"] == ["END"] and out["tool_choice"] == {"type": "any"}
    assert out["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]  # tool result merged with the next user turn
    assert out["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAA",
    }
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
    ]
    assert out["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": "sunny",
    }


def test_anthropic_response_to_openai_with_cache_usage():
    msg = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "stop_reason": "tool_use",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 90,
            "cache_creation_input_tokens": 0,
        },
    }
    out = anthropic_to_openai_response(msg)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city":"Paris"}',
    }
    assert (
        out["usage"]["prompt_tokens"] == 100
        and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 90
    )


def test_anthropic_request_to_openai_and_back():
    body = {
        "model": "m",
        "max_tokens": 50,
        "system": [{"type": "text", "text": "sys"}],
        "stop_sequences": ["x"],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}],
            },
        ],
    }
    out = anthropic_to_openai_request(body)
    assert out["messages"][0] == {"role": "system", "content": "sys"}
    assert out["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "rain"}
    assert out["tool_choice"] == "required" and out["stop"] == ["x"]
    resp = {
        "id": "chatcmpl-9",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "Hello"},
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }
    msg = Message.model_validate(
        openai_to_anthropic_response(resp, "m")
    )  # the SDK's own type accepts it
    assert (
        msg.stop_reason == "max_tokens"
        and msg.usage.input_tokens == 7
        and msg.content[0].text == "Hello"
    )


def test_stream_translation_round_trip():
    """OpenAI chunks -> Anthropic events (parsed by the anthropic SDK's accumulator) -> OpenAI chunks."""
    chunks = [
        {
            "id": "chatcmpl-1",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        },
        {
            "id": "chatcmpl-1",
            "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
        },
        {
            "id": "chatcmpl-1",
            "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}],
        },
        {
            "id": "chatcmpl-1",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"ci'},
                            }
                        ]
                    },
                    "finish_reason": None,
                }
            ],
        },
        {
            "id": "chatcmpl-1",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Rome"}'}}]
                    },
                    "finish_reason": None,
                }
            ],
        },
        {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 8}},
    ]
    conv = OpenAIStreamToAnthropic("m", 20)
    sse = b"".join(conv.feed(c) for c in chunks) + conv.end()
    events = []
    for block in sse.decode().strip().split("\n\n"):
        kind, data = block.split("\n", 1)
        assert kind.startswith("event: ")
        events.append(orjson.loads(data.removeprefix("data: ")))
    try:  # newer anthropic SDKs are built on httpx2, older ones on httpx
        import httpx2 as httpx
    except ImportError:
        import httpx

    # the anthropic SDK's own stream accumulator reads the translated events
    transport = httpx.MockTransport(
        lambda req: httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
    )
    client = anthropic.Anthropic(
        api_key="k", base_url="http://sse.test", http_client=httpx.Client(transport=transport)
    )
    with client.messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        snapshot = stream.get_final_message()
    assert snapshot.content[0].text == "Hello"
    assert snapshot.content[1].name == "weather" and snapshot.content[1].input == {"city": "Rome"}
    assert snapshot.stop_reason == "tool_use" and snapshot.usage.output_tokens == 8

    back = AnthropicStreamToOpenAI()
    out = [c for ev in events for c in back.feed(ev)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in out if c["choices"])
    args = "".join(
        tc["function"].get("arguments", "")
        for c in out
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls") or []
    )
    assert text == "Hello" and orjson.loads(args) == {"city": "Rome"}
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["usage"]["completion_tokens"] == 8
