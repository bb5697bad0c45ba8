"""Requests and tokens per minute, per key and per team (in this process's memory).

A sliding window estimated from two fixed one-minute buckets (the previous
minute weighted by how much of it still overlaps the window): O(1) memory and
time per scope, no burst of 2x at a minute boundary.
"""

from __future__ import annotations

import math


class _Window:
    __slots__ = ("minute", "current", "previous")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.current = 0
        self.previous = 0

    def roll(self, minute: int) -> None:
        if minute != self.minute:
            self.previous = self.current if minute == self.minute + 1 else 0
            self.current = 0
            self.minute = minute


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def _window(self, scope: str, now: float) -> _Window:
        minute = int(now // 60)
        window = self._windows.get(scope)
        if window is None:
            window = self._windows[scope] = _Window(minute)  # type: ignore[index]
        window.roll(minute)
        return window

    def retry_after(self, scope: str, limit: int, amount: int, now: float) -> float | None:
        """Seconds to wait if ``amount`` more would exceed ``limit`` in the last minute, else None."""
        window = self._window(scope, now)
        elapsed = (now % 60) / 60
        used = window.previous * (1 - elapsed) + window.current
        if used + amount <= limit:
            return None
        if window.current + amount > limit:
            return 60 - now % 60  # not even the next minute's share frees enough before it starts
        # The previous minute's weight decays linearly; wait until enough of it has.
        need = used + amount - limit
        return max(1.0, math.ceil(need / max(window.previous, 1) * 60))

    def add(self, scope: str, amount: int, now: float) -> None:
        self._window(scope, now).current += amount
