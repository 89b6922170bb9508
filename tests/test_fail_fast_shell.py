"""The unscoped decorator shells admit a clean call and fail fast in their own frame (no
``enter()`` call), and keep every outcome of ``enter()``: the error's fields and cause, one
count per refusal, observers, metrics-only pass-through, fallbacks, probes and forced opens.
An async generator closed early reports without the circuit's lock."""

from __future__ import annotations

import asyncio
import gc
import traceback
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
)
from llm_circuit_breaker.breaker.circuit import LocalCircuit
from llm_circuit_breaker.strategies import circuit as shells
from llm_circuit_breaker.testing import FakeClock

OPENS_AT_ONCE = CircuitBreakerConfig(failure_threshold=1, reset_timeout=30.0, success_threshold=1)


@pytest.fixture
def entered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the circuits whose ``LocalCircuit.enter`` ran (patched before the
    decorations bind it)."""
    calls: list[str] = []
    enter = LocalCircuit.enter

    def counted(self: LocalCircuit) -> Any:
        calls.append(self.name)
        return enter(self)

    monkeypatch.setattr(LocalCircuit, "enter", counted)
    return calls


def _sync_pair(
    config: CircuitBreakerConfig = OPENS_AT_ONCE, **options: Any
) -> tuple[CircuitBreaker, FakeClock, Callable[[bool], str]]:
    clock = FakeClock(start=100.0)
    breaker = CircuitBreaker("llm", config, clock=clock)

    @circuit_breaker(breaker=breaker, **options)
    def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    return breaker, clock, call


def _open(call: Callable[[bool], Any]) -> BaseException:
    with pytest.raises(ConnectionError) as opened:
        call(True)
    return opened.value


def test_sync_fail_fast_and_clean_calls_do_not_call_enter(entered: list[str]) -> None:
    breaker, clock, call = _sync_pair()
    assert call(False) == "ok"  # admitted lock-free from the first call: no enter()
    armed = len(entered)
    assert armed == 0
    assert call(False) == "ok" and len(entered) == armed  # CLOSED and clean: no enter()
    cause = _open(call)
    after_open = len(entered)
    clock.advance(12.5)
    refusals = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as caught:
            call(False)
        refusals.append(caught.value)
    assert len(entered) == after_open  # refused in the shell's frame
    error = refusals[0]
    assert type(error) is CircuitOpenError
    assert (error.name, error.retry_after, error.reason) == (
        "llm",
        17.5,
        breaker._local.core.open_reason,
    )
    assert str(error) == str(CircuitOpenError("llm", 17.5, error.reason))
    assert error.__cause__ is cause and error.__suppress_context__
    assert len({id(refusal) for refusal in refusals}) == 3
    assert breaker.stats.rejections == 3
    # the refusal is raised by the shell itself: its frame is the last of the traceback
    last = traceback.extract_tb(error.__traceback__)[-1]
    assert last.filename == shells.__file__ and last.name == "wrapper"


def test_async_fail_fast_and_clean_calls_do_not_call_enter(entered: list[str]) -> None:
    clock = FakeClock(start=100.0)
    breaker = CircuitBreaker("allm", OPENS_AT_ONCE, clock=clock)

    @circuit_breaker(breaker=breaker)
    async def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    async def run() -> tuple[int, int, list[CircuitOpenError], BaseException]:
        await call(False)
        armed = len(entered)
        await call(False)
        with pytest.raises(ConnectionError) as opened:
            await call(True)
        before = len(entered)
        clock.advance(10.0)
        refusals = []
        for _ in range(2):
            with pytest.raises(CircuitOpenError) as caught:
                await call(False)
            refusals.append(caught.value)
        return armed, len(entered) - before, refusals, opened.value

    armed, refusal_enters, refusals, cause = asyncio.run(run())
    assert armed == 0 and refusal_enters == 0
    assert [(e.name, e.retry_after) for e in refusals] == [("allm", 20.0)] * 2
    assert refusals[0].__cause__ is cause and refusals[0] is not refusals[1]
    assert breaker.stats.rejections == 2


def test_a_refusal_leaves_no_reference_cycle() -> None:
    _, _, call = _sync_pair()
    _open(call)
    gc.collect()
    gc.disable()
    try:
        try:
            call(False)
        except CircuitOpenError as exc:
            ref = weakref.ref(exc)
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_observers_metrics_only_fallbacks_probes_and_forced_opens_still_apply(
    entered: list[str],
) -> None:
    # an observer hears each refusal once (enter() decides then)
    breaker, _, call = _sync_pair()
    heard: list[bool] = []

    class Observer:
        def rejected(self, _breaker: object, enforced: bool) -> None:
            heard.append(enforced)

        def retried(
            self, _breaker: object, attempt: int, error: BaseException, delay: float
        ) -> None:
            raise AssertionError("no retry here")

    breaker.add_observer(Observer())
    _open(call)
    with pytest.raises(CircuitOpenError):
        call(False)
    assert heard == [True] and breaker.stats.rejections == 1
    # metrics-only: the refusal is counted and the call goes through
    shadow, _, shadowed = _sync_pair(CircuitBreakerConfig(failure_threshold=1, enabled=False))
    _open(shadowed)
    assert shadowed(False) == "ok" and shadow.stats.rejections == 1
    # a fallback answers a refusal, counted once
    fell, clock, with_fallback = _sync_pair(fallback=lambda fail: f"fallback {fail}")
    _open(with_fallback)
    assert with_fallback(False) == "fallback False" and fell.stats.rejections == 1
    # past reset_timeout the next call is a probe, admitted (through enter())
    clock.advance(30.0)
    before = len(entered)
    assert with_fallback(False) == "ok" and len(entered) == before + 1
    assert fell.state is CircuitState.CLOSED
    # held open: retry_after is None
    held, _, plain = _sync_pair()
    held.force_open()
    with pytest.raises(CircuitOpenError) as caught:
        plain(False)
    assert caught.value.retry_after is None and held.stats.rejections == 1


def test_async_generator_closed_early_counts_ignored_without_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[object] = []
    record = LocalCircuit.record

    def counted(self: LocalCircuit, permit: int, outcome: Any, **kw: Any) -> Any:
        recorded.append(outcome)
        return record(self, permit, outcome, **kw)

    monkeypatch.setattr(LocalCircuit, "record", counted)
    breaker = CircuitBreaker("agen", OPENS_AT_ONCE)
    closed: list[bool] = []

    @circuit_breaker(breaker=breaker)
    async def items() -> AsyncGenerator[int, None]:
        try:
            for i in range(5):
                yield i
        finally:
            closed.append(True)

    async def first() -> int:
        stream = items()
        got = -1
        async for item in stream:
            got = item
            break
        await stream.aclose()
        return got

    assert asyncio.run(first()) == 0
    assert closed == [True]
    stats = breaker.stats
    assert (stats.ignored, stats.successes, stats.failures) == (1, 0, 0)
    assert recorded == []  # counted without a report under the lock


def test_an_abandoned_call_of_a_circuit_with_failures_is_still_reported() -> None:
    breaker = CircuitBreaker("agen2", CircuitBreakerConfig(failure_threshold=3))
    fail = [True]

    @circuit_breaker(breaker=breaker)
    async def items() -> AsyncGenerator[int, None]:
        if fail[0]:
            raise ConnectionError("down")
        yield 1
        yield 2

    async def run() -> None:
        with pytest.raises(ConnectionError):
            async for _ in items():
                pass
        fail[0] = False
        stream = items()
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(run())
    stats = breaker.stats
    assert (stats.failures, stats.ignored) == (1, 1)
    assert breaker.failure_count == 1  # an abandoned call neither clears nor adds
