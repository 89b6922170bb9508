"""The pytest plugin (entry point ``pytest11``, loaded when the package is installed).

It only defines fixtures, so tests that do not ask for them see no change:

* ``llm_breakers`` - isolation: ``breaker_registry.reset_all()`` before and after the test,
  also for every registry passed to ``llm_breakers.track(registry)``; it stands for the
  default registry (``llm_breakers.get("openai").state``).
* ``llm_clock`` - a :class:`~llm_circuit_breaker.testing.FakeClock` installed as the
  library's time source for the test: waits advance it at once, ``llm_clock.advance(30)``
  moves time.
* ``fake_llm`` - a started :class:`~llm_circuit_breaker.testing.FakeLLMServer`, stopped
  after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llm_circuit_breaker.breaker.registry import BreakerRegistry
    from llm_circuit_breaker.testing import FakeClock, FakeLLMServer

__all__ = ["LLMBreakers", "fake_llm", "llm_breakers", "llm_clock"]


class LLMBreakers:
    """The default registry, reset around the test, and the registries it was told to track.

    Reads and calls go to the default registry (``get``, ``snapshot``, ``in``, ``len`` ...).
    """

    def __init__(self, registry: BreakerRegistry) -> None:
        self.registry = registry
        self._tracked = [registry]

    def track(self, registry: BreakerRegistry) -> BreakerRegistry:
        """Reset ``registry`` now and after the test too; returns it."""
        registry.reset_all()
        self._tracked.append(registry)
        return registry

    def reset_all(self) -> None:
        """Reset every tracked registry in place (the test's start and end do it)."""
        for registry in self._tracked:
            registry.reset_all()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)

    def __contains__(self, name: object) -> bool:
        return name in self.registry

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)

    def __repr__(self) -> str:
        return f"LLMBreakers({self.registry!r})"


@pytest.fixture
def llm_breakers() -> Iterator[LLMBreakers]:
    """Every breaker of the default registry reset before and after the test (and of each
    registry given to ``.track()``): no OPEN circuit or throttle pause leaks between tests."""
    from llm_circuit_breaker.breaker.registry import breaker_registry

    breakers = LLMBreakers(breaker_registry)
    breakers.reset_all()
    yield breakers
    breakers.reset_all()


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
