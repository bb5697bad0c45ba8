"""What every upstream call needs of HTTP, as one small protocol: status, headers, and the body
or a stream of it. :class:`thrifty.providers.http.HTTPPool` is the one implementation; live
calls (the provider adapters) and provider batch API calls both go through it, so both get
the same TLS trust, proxy and timeouts (:func:`thrifty.providers.http.pool_for`).

Headers are kept as the raw response head and parsed only when asked (:class:`Head`): a
successful call never pays for them; a 429 or 503 reads its ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class Head:
    """A response head as received (status line and header lines), parsed on first use."""

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: list[bytes] | bytes = b"") -> None:
        self._raw = raw
        self._parsed: dict[str, str] | None = None

    def _headers(self) -> dict[str, str]:
        if self._parsed is None:
            raw = self._raw if isinstance(self._raw, bytes) else b"".join(self._raw)
            head = raw.split(b"\r\n\r\n", 1)[0]
            out: dict[str, str] = {}
            for line in head.split(b"\r\n")[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    key = name.strip().decode("latin-1").lower()
                    val = value.strip().decode("latin-1")
                    out[key] = f"{out[key]}, {val}" if key in out else val
            self._parsed = out
        return self._parsed

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (case-insensitive; repeated headers joined by ", ")."""
        return self._headers().get(name.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        return list(self._headers().items())


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: Head


@dataclass(slots=True)
class StreamResponse:
    status: int
    headers: Head
    chunks: AsyncIterator[bytes]  # the body as it arrives; read it to the end or close it


class Transport(Protocol):
    """One origin's HTTP client. Raises :class:`thrifty.providers.http.HTTPError` when no
    response came; its ``sent`` says whether the request may have reached the upstream."""

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        connect: float,
        timeout: float,
        headers: bytes = b"",
    ) -> Response:
        """The whole response; ``timeout`` bounds the wait for all of it. ``headers``: extra
        request header lines (``b"Name: value\\r\\n"`` each), for this request only."""

    async def stream(
        self, method: str, path: str, body: bytes, *, connect: float, idle: float, total: float
    ) -> StreamResponse:
        """Status and headers once the head is in, then the body in chunks."""

    def close(self) -> None: ...


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait: delay-seconds or an HTTP-date (a date in
    the past is 0). None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
