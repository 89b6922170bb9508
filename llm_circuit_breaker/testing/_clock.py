"""A fake clock for tests: time moves only when told to."""

from __future__ import annotations

import math
import threading

from llm_circuit_breaker.breaker.clock import system_async_sleep

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock that moves only when told to; thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []  # every wait asked of sleep / async_sleep, in order

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"a clock only moves forward by finite seconds, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the wait and advance the clock instead of sleeping."""
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def async_sleep(self, seconds: float) -> None:
        """Like :meth:`sleep`, for async code (yields to the asyncio or trio loop once)."""
        self.sleep(seconds)
        await system_async_sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
