"""One shell for every scope of a scoped decoration: the rare paths (a failure, a fallback, a
returned stream, a throttle's wait, a call timeout) reach the call's own breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from llm_circuit_breaker import BreakerRegistry, CircuitOpenError, circuit_breaker
from llm_circuit_breaker.breaker.telemetry import StateChange, ThrottleEvent
from llm_circuit_breaker.testing import FakeClock


class Down(Exception):
    """A provider failure."""


def test_a_failure_opens_its_own_scope_and_the_listener_hears_it() -> None:
    registry = BreakerRegistry()
    heard: list[StateChange | ThrottleEvent] = []

    @circuit_breaker(
        "svc:{model}", registry=registry, failure_threshold=1, on_state_change=heard.append
    )
    def call(model: str, fail: bool = False) -> str:
        if fail:
            raise Down(model)
        return model

    assert call("a") == "a"
    with pytest.raises(Down):
        call("b", fail=True)
    with pytest.raises(CircuitOpenError):
        call("b")
    assert call("a") == "a"
    assert registry.get("svc:b").stats.failures == 1
    assert registry.get("svc:a").stats.successes == 2
    assert [(e.name, e.new.value) for e in heard] == [("svc:b", "OPEN")]


def test_a_fallback_answers_for_the_open_scope_alone() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("svc:{model}", registry=registry, fallback=lambda model: f"cached {model}")
    def call(model: str) -> str:
        return model

    call("b")
    registry.get("svc:b").force_open()
    assert call("b") == "cached b"
    assert call("a") == "a"


def test_a_returned_stream_reports_to_its_scope_when_it_ends() -> None:
    registry = BreakerRegistry()

    def items(fail: bool) -> Iterator[int]:
        yield 1
        if fail:
            raise Down("mid-stream")
        yield 2

    @circuit_breaker("svc:{model}", registry=registry, failure_threshold=1)
    def call(model: str, fail: bool = False) -> Iterator[int]:
        return items(fail)

    assert list(call("a")) == [1, 2]
    stream = call("b", fail=True)
    assert next(stream) == 1
    assert registry.get("svc:b").stats.calls == 0  # not reported before the stream ends
    with pytest.raises(Down):
        next(stream)
    assert registry.get("svc:b").state.value == "OPEN"
    assert registry.get("svc:a").stats.successes == 1


def test_a_scope_waits_for_its_own_throttle_slot() -> None:
    clock = FakeClock(start=1000.0)
    registry = BreakerRegistry(clock=clock)

    @circuit_breaker("svc:{model}", registry=registry, requests_per_minute=6)
    def call(model: str) -> str:
        return model

    for _ in range(6):
        call("a")
    call("b")  # another scope: its own bucket, no wait
    assert clock.sleeps == []
    assert call("a") == "a"
    assert clock.sleeps == [10.0]


async def test_a_coroutine_scope_times_out_and_counts_on_its_breaker() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("svc:{model}", registry=registry, call_timeout=0.01)
    async def call(model: str, hang: bool = False) -> str:
        if hang:
            await asyncio.Event().wait()
        return model

    assert await call("a") == "a"
    with pytest.raises(TimeoutError, match="svc:b"):
        await call("b", hang=True)
    assert registry.get("svc:b").stats.failures == 1
    assert registry.get("svc:a").stats.failures == 0


def test_a_call_timeout_on_a_plain_scoped_function_is_refused_on_its_first_call() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("svc:{model}", registry=registry, call_timeout=1.0)
    def call(model: str) -> str:
        return model

    with pytest.raises(TypeError, match="call_timeout applies to coroutine functions"):
        call("a")
