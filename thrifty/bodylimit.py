"""A request-body size limit for the ASGI apps the gateway mounts beside its model endpoints
(the admin API, ``/v1/feedback``, ``/v1/files``, ``/v1/batches``, the dashboard).

The model endpoints read their bodies with :func:`read_body`;
:func:`limit_body` gives any other ASGI app the same guarantee: a request whose
``Content-Length`` is over the limit is refused with 413 before a byte of its body is read,
and a chunked (or lying) body is read only until it passes the limit, so at most ``limit``
bytes of one request are ever held in memory. The refusal is rendered by the caller's
``render`` function, so each API answers in its own error format. A body within the limit is
handed to the app unchanged (it was buffered, as the app would have buffered it anyway).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from thrifty.errors import ThriftyError, openai_error

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BodyTooLarge",
    "ClientDisconnected",
    "declared_length",
    "limit_body",
    "openai_too_large",
    "read_body",
    "too_large_message",
]

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # the gateway's max_body_bytes default (base64 images)

# (limit) -> (JSON body, content type) of the 413 response
Render = Callable[[int], tuple[bytes, bytes]]
ASGIApp = Callable[
    [dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]
]


def too_large_message(limit: int) -> str:
    return f"Request body is larger than the gateway's limit of {limit} bytes."


def openai_too_large(limit: int) -> tuple[bytes, bytes]:
    """OpenAI's error format (the gateway's): ``{"error": {message, type, param, code}}``."""
    exc = ThriftyError(too_large_message(limit), status=413, code="request_too_large")
    return orjson.dumps(openai_error(exc)), b"application/json"


def declared_length(value: bytes | None) -> int | None:
    """A ``Content-Length`` header's value as a number (None: absent or malformed, which the
    server rejects itself)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return declared_length(value)
    return None


def limit_body(app: ASGIApp, limit: int, render: Render = openai_too_large) -> ASGIApp:
    """``app`` behind a ``limit``-byte request-body limit (413 rendered by ``render``)."""
    if limit <= 0:
        raise ValueError(f"the body limit must be a positive number of bytes (got {limit})")

    async def refuse(send: Callable[[dict], Awaitable[None]]) -> None:
        body, content_type = render(limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", content_type), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def limited(scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await refuse(send)  # nothing read
            return
        chunks: deque[bytes] = deque()
        size = 0
        last: dict | None = None  # a non-body message (http.disconnect) that ended the read
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: let the app see it
                last = message
                break
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    await refuse(send)  # stop reading: the rest is never buffered
                    return
                chunks.append(body)
            if not message.get("more_body"):
                break

        ended = bool(size) and last is None  # the last buffered chunk carries more_body=False

        async def replay() -> dict:
            # The buffered chunks one by one (no joined copy; each is freed once handed over).
            nonlocal ended
            if chunks:
                body = chunks.popleft()
                return {
                    "type": "http.request",
                    "body": body,
                    "more_body": bool(chunks) or last is not None,
                }
            if last is not None:
                return last  # a disconnect is final
            if not ended:  # an empty body
                ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return limited


class BodyTooLarge(Exception):
    """The request body is over the limit (nothing past the limit was read)."""


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


async def read_body(
    receive: Callable[[], Awaitable[dict]], limit: int, declared: int | None
) -> bytes:
    """The whole request body, read once: :class:`BodyTooLarge` as soon as it passes ``limit``
    (a ``declared`` length over it, the request's ``Content-Length``: before a byte is read),
    :class:`ClientDisconnected` when the client goes away mid-body (never a truncated body
    taken for a whole one)."""
    if declared is not None and declared > limit:
        raise BodyTooLarge()
    first = None
    chunks: list[bytes] | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnected()
        body = message.get("body", b"")
        if body:
            size += len(body)
            if size > limit:
                raise BodyTooLarge()
            if first is None:
                first = body
            else:
                if chunks is None:
                    chunks = [first]
                chunks.append(body)
        if not message.get("more_body"):
            break
    if chunks is not None:
        return b"".join(chunks)
    return first or b""
