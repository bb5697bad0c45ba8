"""Errors rendered in the calling API's own wire format (OpenAI, Anthropic).

Every failure a client can see is a :class:`thrifty.errors.ThriftyError`; the app turns
anything else into a plain 500 without a traceback.
"""

from __future__ import annotations

import orjson

from thrifty.errors import ThriftyError

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


def openai_body(status: int, message: str, type: str, code: str | None, param: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def anthropic_body(status: int, message: str, type: str) -> bytes:
    # Anthropic's error type follows from the status; its SDK maps statuses to exception classes.
    type = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": type, "message": message}})


# The wire formats errors are rendered in.
OPENAI, ANTHROPIC, RESPONSES = "openai", "anthropic", "responses"


def error_body(fmt: str, exc: ThriftyError) -> bytes:
    """``exc`` as the body the calling API's SDK expects (the Responses API uses OpenAI's)."""
    if fmt == ANTHROPIC:
        return anthropic_body(exc.status, exc.message, exc.type)
    return openai_body(exc.status, exc.message, exc.type, exc.code, exc.param)


def stream_error(fmt: str, message: str, code: str) -> bytes:
    """The last event of a stream that cannot finish: the SDKs raise it as an API error."""
    if fmt == ANTHROPIC:
        return b"event: error\ndata: " + orjson.dumps(
            {"type": "error", "error": {"type": "api_error", "message": message}}
        ) + b"\n\n"
    return (
        b"data: "
        + orjson.dumps(
            {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
        )
        + b"\n\n"
    )
