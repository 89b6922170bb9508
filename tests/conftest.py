"""Fixtures shared by the whole suite: a fresh default registry per test and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llm_circuit_breaker import breaker_registry
from llm_circuit_breaker.testing import FakeClock


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    """Every test starts and ends with an empty process-wide registry."""
    breaker_registry.clear()
    yield
    breaker_registry.clear()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock(start=1000.0)
