"""The one error type: every failure a user can see, with what each wire format needs.

A :class:`ThriftyError` carries an HTTP status, an error ``type`` and ``code`` (OpenAI's
vocabulary), the offending ``param`` and extra response headers; the HTTP layer renders it
once per wire format (:mod:`thrifty.gateway.errors`), the CLI prints its message as one line.
Spend control, the providers, the batch store and the caches raise subclasses of it, so no
caller needs to know which family an error came from.
"""

from __future__ import annotations


class ThriftyError(Exception):
    """An error thrifty reports to its users without a traceback."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}


class UsageError(ThriftyError):
    """Bad input from the user (a file, a flag, a value): printed as one clear line."""


class GatewayError(ThriftyError):
    """A request the gateway refuses or cannot complete (status first, as HTTP reads)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status, type=type, code=code, param=param, headers=headers)


def openai_error(exc: ThriftyError) -> dict[str, dict[str, str | None]]:
    """``exc`` as OpenAI's error document, the format of every OpenAI-style API thrifty serves
    (``/v1/*``, ``/admin``, batch result lines): ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def bad_request(
    message: str, *, param: str | None = None, code: str | None = "invalid_value"
) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
