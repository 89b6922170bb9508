"""The library's one time source: what every breaker, retry, throttle wait and call timeout
without a clock of its own reads the time from and waits with.

``now()`` is monotonic seconds. ``sleep(seconds)`` and ``await async_sleep(seconds)`` wait
through the runtime that is running: ``time.sleep`` looked up when called (so gevent's
monkey-patching applies even when this package was imported before ``patch_all``), and
``asyncio.sleep`` or ``trio.sleep`` (anyio on either backend included) as sniffio says.

Tests replace the source with :func:`install` (``testing.frozen_time()`` and the
``llm_clock`` fixture do) and put the previous one back with :func:`restore`. A breaker given
``clock=`` keeps its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable

__all__ = [
    "SHARED",
    "TimeSource",
    "async_sleep",
    "current",
    "install",
    "now",
    "restore",
    "running_library",
    "sleep",
    "system",
    "system_async_sleep",
    "system_sleep",
]

Sleep = Callable[[float], object]
AsyncSleep = Callable[[float], Awaitable[object]]


class TimeSource:
    """Where the time comes from and how waiting is done."""

    __slots__ = ("async_sleep", "now", "sleep")

    def __init__(self, now: Callable[[], float], sleep: Sleep, async_sleep: AsyncSleep) -> None:
        self.now = now
        self.sleep = sleep
        self.async_sleep = async_sleep

    @classmethod
    def of(cls, clock: Callable[[], float]) -> TimeSource:
        """A source reading ``clock``, sleeping with its ``sleep`` / ``async_sleep`` methods
        when it has them (``testing.FakeClock`` does), else for real."""
        return cls(
            clock,
            getattr(clock, "sleep", system_sleep),
            getattr(clock, "async_sleep", system_async_sleep),
        )

    def __repr__(self) -> str:
        return f"TimeSource(now={self.now!r}, sleep={self.sleep!r})"


def running_library() -> str:
    """``"trio"`` when trio runs this code (anyio's trio backend included), else
    ``"asyncio"``. Nothing is imported unless trio already is."""
    if "trio" not in sys.modules:
        return "asyncio"
    try:
        import sniffio

        return sniffio.current_async_library()
    except Exception:  # no async library running here, or no sniffio: asyncio's calls apply
        return "asyncio"


def system_sleep(seconds: float) -> None:
    """``time.sleep``, looked up now: gevent may have patched it since this module loaded."""
    time.sleep(seconds)


async def system_async_sleep(seconds: float) -> None:
    """``trio.sleep`` under trio, ``asyncio.sleep`` otherwise."""
    if running_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        import asyncio  # loaded already: a coroutine is running

        await asyncio.sleep(seconds)


def system() -> TimeSource:
    """The real time source: monotonic seconds, real sleeps."""
    return TimeSource(time.monotonic, system_sleep, system_async_sleep)


# The installed source. Breakers without a clock of their own hold this very object, and
# install() changes it in place, so they see a replacement at once.
SHARED = system()


def now() -> float:
    """Monotonic seconds from the installed source."""
    return SHARED.now()


def sleep(seconds: float) -> None:
    """Wait ``seconds`` with the installed source (a fake clock just advances)."""
    SHARED.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """Wait ``seconds`` with the installed source, in the running async library."""
    await SHARED.async_sleep(seconds)


def current() -> TimeSource:
    """A copy of the installed source (what :func:`restore` takes back)."""
    return TimeSource(SHARED.now, SHARED.sleep, SHARED.async_sleep)


def install(
    clock: Callable[[], float],
    *,
    sleep: Sleep | None = None,
    async_sleep: AsyncSleep | None = None,
) -> TimeSource:
    """Make ``clock`` the library's time source; the source it replaces (for
    :func:`restore`). Waits use ``sleep`` / ``async_sleep`` when given, else the clock's
    methods of those names, else real sleeps."""
    if not callable(clock):
        raise TypeError(f"a clock is a callable returning seconds, got {clock!r}")
    previous = current()
    chosen = TimeSource.of(clock)
    SHARED.sleep = sleep or chosen.sleep
    SHARED.async_sleep = async_sleep or chosen.async_sleep
    SHARED.now = clock
    return previous


def restore(previous: TimeSource | None = None) -> None:
    """Put ``previous`` back (what :func:`install` returned), or the real time source."""
    source = previous or system()
    SHARED.now, SHARED.sleep, SHARED.async_sleep = source.now, source.sleep, source.async_sleep
