"""A fake clock for tests: time moves only when told to; and the library's time source
replaced for a block (:func:`frozen_time`, :func:`instant`)."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

from llm_circuit_breaker.breaker.clock import TimeSource, install, restore, system_async_sleep

__all__ = ["FakeClock", "frozen_time", "instant"]

Sleep = Callable[[float], object]
AsyncSleep = Callable[[float], Awaitable[object]]

# The blocks in force, oldest first, each with the source it replaced: a block that ends
# while a later one is still in force (threads) hands its predecessor to that later block
# instead of putting it back, so no fake clock outlives its block whatever the order.
_blocks: list[list[TimeSource]] = []
_blocks_lock = threading.Lock()


@contextlib.contextmanager
def _installed(
    clock: Callable[[], float], sleep: Sleep | None = None, async_sleep: AsyncSleep | None = None
) -> Iterator[None]:
    with _blocks_lock:
        block = [install(clock, sleep=sleep, async_sleep=async_sleep)]
        _blocks.append(block)
    try:
        yield
    finally:
        with _blocks_lock:
            index = next(i for i, held in enumerate(_blocks) if held is block)
            del _blocks[index]
            if index < len(_blocks):  # a later block is in force: it will restore ours
                _blocks[index][0] = block[0]
            else:
                restore(block[0])


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


@contextlib.contextmanager
def frozen_time(start: float | None = None) -> Iterator[FakeClock]:
    """A :class:`FakeClock` as the library's time source for the block: every breaker, retry
    and throttle without a clock of its own reads it, and every wait they would sleep
    advances it at once. It starts at the real monotonic time unless ``start`` is given::

        with frozen_time() as clock:
            ...                  # the circuit opens
            clock.advance(30)    # reset_timeout has passed: a probe is admitted
    """
    clock = FakeClock(time.monotonic() if start is None else start)
    with _installed(clock):
        yield clock


def _no_sleep(seconds: float) -> None:
    pass


async def _checkpoint(seconds: float) -> None:
    await system_async_sleep(0)  # other tasks still get their turn


@contextlib.contextmanager
def instant() -> Iterator[None]:
    """Real time, but no waits for the block: backoffs, ``Retry-After`` and throttle slots
    return at once (async ones after yielding to the loop), like stamina's testing mode."""
    with _installed(time.monotonic, _no_sleep, _checkpoint):
        yield
