"""Errors rendered in the calling API's own wire format (OpenAI, Anthropic).

Every failure a client can see is a :class:`thrifty.errors.ThriftyError`; the app turns
anything else into a plain 500 without a traceback.
"""

from __future__ import annotations

import orjson

from thrifty.errors import ThriftyError, openai_error

# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, object]:
    """Anthropic's error document; its type follows from the status, as its SDK maps statuses to
    exception classes."""
    type = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": type, "message": message}}


# The wire formats errors are rendered in.
OPENAI, ANTHROPIC, RESPONSES = "openai", "anthropic", "responses"


def error_body(fmt: str, exc: ThriftyError) -> bytes:
    """``exc`` as the body the calling API's SDK expects (the Responses API uses OpenAI's)."""
    if fmt == ANTHROPIC:
        return orjson.dumps(anthropic_error(exc.status, exc.message))
    return orjson.dumps(openai_error(exc))


def stream_error(fmt: str, message: str, code: str) -> bytes:
    """The last event of a stream that cannot finish: the SDKs raise it as an API error."""
    if fmt == ANTHROPIC:
        return b"event: error\ndata: " + orjson.dumps(anthropic_error(500, message)) + b"\n\n"
    exc = ThriftyError(message, status=502, type="upstream_error", code=code)
    return b"data: " + orjson.dumps(openai_error(exc)) + b"\n\n"
