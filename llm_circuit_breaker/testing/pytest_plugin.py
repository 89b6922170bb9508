"""The pytest plugin (entry point ``pytest11``, loaded when the package is installed).

It only defines fixtures, so tests that do not ask for them see no change:

* ``llm_breakers`` - isolation: ``breaker_registry.reset_all()`` before and after the test,
  also for every registry passed to ``llm_breakers.track(registry)``; it is the default
  registry itself (``llm_breakers.get("openai").state``).
* ``llm_clock`` - a :class:`~llm_circuit_breaker.testing.FakeClock` installed as the
  library's time source for the test: waits advance it at once, ``llm_clock.advance(30)``
  moves time.
* ``fake_llm`` - a started :class:`~llm_circuit_breaker.testing.FakeLLMServer`, stopped
  after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from llm_circuit_breaker.breaker.registry import BreakerRegistry
    from llm_circuit_breaker.testing import FakeClock, FakeLLMServer

__all__ = ["fake_llm", "llm_breakers", "llm_clock"]


class _Tracker:
    """``track`` on the yielded registry: the registries reset again after the test."""

    def __init__(self) -> None:
        self.registries: list[BreakerRegistry] = []

    def __call__(self, registry: BreakerRegistry) -> BreakerRegistry:
        """Reset ``registry`` now and after the test too; returns it."""
        registry.reset_all()
        self.registries.append(registry)
        return registry


@pytest.fixture
def llm_breakers() -> Iterator[BreakerRegistry]:
    """The default registry itself (``llm_breakers is breaker_registry``), every breaker of
    it reset before and after the test, and of each registry given to
    ``llm_breakers.track(registry)`` (which returns it): no OPEN circuit or throttle pause
    leaks between tests."""
    from llm_circuit_breaker.breaker.registry import breaker_registry

    tracker = _Tracker()
    breaker_registry.reset_all()
    breaker_registry.track = tracker  # type: ignore[attr-defined]  # for this test only
    try:
        yield breaker_registry
    finally:
        vars(breaker_registry).pop("track", None)
        for registry in [breaker_registry, *tracker.registries]:
            registry.reset_all()


@pytest.fixture
def llm_clock() -> Iterator[FakeClock]:
    """A fake clock as the library's time source for the test: backoffs, ``Retry-After``
    and throttle waits advance it at once; ``llm_clock.advance(30)`` moves time."""
    from llm_circuit_breaker.testing import frozen_time

    with frozen_time() as clock:
        yield clock


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A fake LLM provider on 127.0.0.1 (random port), from sync and async tests alike."""
    from llm_circuit_breaker.testing import FakeLLMServer

    with FakeLLMServer() as server:
        yield server
