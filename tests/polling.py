"""Wait for a condition another task or thread brings about, however busy the machine is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PATIENCE = 10.0  # seconds; only a broken test waits this long


def until(condition: Callable[[], bool], patience: float = PATIENCE) -> None:
    """Return once ``condition()`` holds (polled from this thread), else fail the test."""
    given_up = time.monotonic() + patience
    while not condition():
        assert time.monotonic() < given_up, "the condition never held"
        time.sleep(0.005)


async def auntil(condition: Callable[[], bool], patience: float = PATIENCE) -> None:
    """Like :func:`until`, letting the event loop's other tasks run between polls."""
    given_up = time.monotonic() + patience
    while not condition():
        assert time.monotonic() < given_up, "the condition never held"
        await asyncio.sleep(0.005)
