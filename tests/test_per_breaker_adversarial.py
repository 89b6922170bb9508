"""Adversarial probes of the per-breaker cost work (issue 29): scoped breakers dropped,
renamed and made again under a tiny ``max_breakers``, threads racing misses, counts read
across the lock-free transitions, forked children. Bounded by counts, never by time."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
)
from llm_circuit_breaker.breaker.registry import ScopeCache


def _cache_of(wrapper: Any) -> ScopeCache:
    """The scope cache a scoped decoration's shell reads."""
    held = [
        getattr(cell.cell_contents, "__self__", cell.cell_contents)
        for cell in wrapper.__closure__
    ]
    return next(h for h in held if isinstance(h, ScopeCache))


def _scoped(registry: BreakerRegistry, template: str = "t:{k}", **fields: Any) -> Any:
    @circuit_breaker(template, registry=registry, **fields)
    def call(k: Any, fail: bool = False) -> Any:
        if fail:
            raise RuntimeError("provider down")
        return k

    return call


# -- a dropped breaker that something still holds --------------------------------------------


def test_two_decorations_of_one_template_agree_on_a_scope_dropped_and_made_again() -> None:
    """Two decorations name ``t:1``; the registry drops it (past ``max_breakers``) while the
    second one's cache still holds it. When the first makes ``t:1`` again, both must guard
    their calls with the one breaker the registry lists: failures seen through the second
    open the circuit the first (and ``registry.get``) sees."""
    registry = BreakerRegistry(max_breakers=1)
    first = _scoped(registry, failure_threshold=2)
    second = _scoped(registry, failure_threshold=2)
    assert first(1) == 1 and second(1) == 1  # both caches hold t:1
    assert first(2) == 2  # t:1 dropped: the bound is 1
    assert "t:1" not in registry
    assert first(1) == 1  # t:1 again
    for _ in range(2):
        with pytest.raises(RuntimeError):
            second(1, fail=True)
    assert registry.get("t:1").state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        first(1)


def test_a_failure_of_a_call_in_flight_when_its_scope_dropped_is_not_lost() -> None:
    """A call of ``t:1`` is in flight when ``t:1`` is dropped for another scope (it was
    CLOSED and clean then). Its failure counts on the breaker later calls of ``t:1`` get."""
    registry = BreakerRegistry(max_breakers=1)

    @circuit_breaker("t:{k}", registry=registry, failure_threshold=2)
    def call(k: int, then: int | None = None, fail: bool = False) -> int:
        if then is not None:
            call(then)  # another scope's first call while this one is in flight
        if fail:
            raise RuntimeError("provider down")
        return k

    with pytest.raises(RuntimeError):
        call(1, then=2, fail=True)
    with pytest.raises(RuntimeError):
        call(1, fail=True)
    assert registry.get("t:1").state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        call(1)
