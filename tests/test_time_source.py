"""One time source: every breaker, retry, throttle wait and call timeout without a clock of
its own reads the library's, which tests replace; a breaker given ``clock=`` keeps its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    Outcome,
    ServerError,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.breaker import clock as time_source
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock


@pytest.fixture
def fake() -> Iterator[FakeClock]:
    """A FakeClock installed as the library's time source for one test."""
    clock = FakeClock(start=500.0)
    previous = time_source.install(clock)
    yield clock
    time_source.restore(previous)


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        breaker.record(breaker.admit(), Outcome.FAILURE)


def test_the_real_source_is_monotonic_and_installed_by_default() -> None:
    """Unless a test installs another, now() is time.monotonic and waits really wait."""
    before = time.monotonic()
    assert before <= time_source.now() <= time.monotonic()
    assert time_source.SHARED.now is time.monotonic


def test_a_breaker_without_a_clock_reads_the_installed_one(fake: FakeClock) -> None:
    """An OPEN circuit turns HALF_OPEN when the installed fake clock passes reset_timeout."""
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=2, reset_timeout=30))
    _open(breaker)
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_after == pytest.approx(30.0)
    fake.advance(30.0)
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_replacement_installed_after_the_breaker_was_made_applies() -> None:
    """Breakers hold the shared source, not a copy: installing later still reaches them."""
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1, reset_timeout=30))
    clock = FakeClock(start=time.monotonic())
    previous = time_source.install(clock)
    try:
        _open(breaker)
        clock.advance(31.0)
        assert breaker.state is CircuitState.HALF_OPEN
    finally:
        time_source.restore(previous)


def test_a_breaker_given_a_clock_keeps_its_own(fake: FakeClock) -> None:
    """clock= wins over the installed source: moving the installed one changes nothing."""
    own = FakeClock(start=0.0)
    breaker = CircuitBreaker(
        "own", CircuitBreakerConfig(failure_threshold=1, reset_timeout=30), clock=own
    )
    _open(breaker)
    fake.advance(100.0)
    assert breaker.state is CircuitState.OPEN
    own.advance(30.0)
    assert breaker.state is CircuitState.HALF_OPEN


def test_throttle_waits_advance_the_installed_clock(fake: FakeClock) -> None:
    """A throttle slot 60 s away is waited for on the fake clock, at once."""
    config = CircuitBreakerConfig(requests_per_minute=1, throttle_max_wait=120)
    breaker = CircuitBreaker("paced", config)
    breaker.record_success(breaker.admit())
    started = time.monotonic()
    breaker.record_success(breaker.admit())
    assert fake.sleeps == [pytest.approx(60.0)]
    assert time.monotonic() - started < 5.0


async def test_async_throttle_waits_advance_the_installed_clock(fake: FakeClock) -> None:
    """The coroutine face waits on the installed source too."""
    config = CircuitBreakerConfig(requests_per_minute=1, throttle_max_wait=120)
    breaker = CircuitBreaker("paced", config)
    await breaker.arecord_success(await breaker.aadmit())
    await breaker.arecord_success(await breaker.aadmit())
    assert fake.sleeps == [pytest.approx(60.0)]


def test_retry_sleeps_go_through_the_installed_source(fake: FakeClock) -> None:
    """with_retry decorated before the source was replaced still sleeps on it."""
    calls: list[int] = []

    @with_retry(max_retries=3, jitter=False)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise http_status_error(503)
        return "ok"

    assert flaky() == "ok"
    assert fake.sleeps == [1.0, 2.0, 4.0]


async def test_async_retry_sleeps_go_through_the_installed_source(fake: FakeClock) -> None:
    """The async loop sleeps on the installed source as well."""
    calls: list[int] = []

    @with_retry(max_retries=2, jitter=False)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise http_status_error(503)
        return "ok"

    assert await flaky() == "ok"
    assert fake.sleeps == [1.0, 2.0]


def test_retry_deadline_reads_the_installed_clock(fake: FakeClock) -> None:
    """deadline=5: the waits 1 and 2 fit, the next (4) would end past it, so retries stop."""

    @with_retry(max_retries=10, jitter=False, deadline=5.0)
    def down() -> str:
        raise http_status_error(503)

    with pytest.raises(ServerError):
        down()
    assert fake.sleeps == [1.0, 2.0]


def test_sleep_looks_up_time_sleep_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real sleep is time.sleep as it is when called (gevent patches it after import)."""
    asked: list[float] = []
    monkeypatch.setattr(time, "sleep", asked.append)
    time_source.sleep(1.5)
    assert asked == [1.5]


def test_install_returns_what_restore_takes_back() -> None:
    """Installations nest: restore(previous) puts back the one before, restore() the real one."""
    outer, inner = FakeClock(start=1.0), FakeClock(start=2.0)
    first = time_source.install(outer)
    second = time_source.install(inner)
    assert time_source.now() == 2.0
    time_source.restore(second)
    assert time_source.now() == 1.0
    time_source.restore(first)
    assert time_source.SHARED.now is time.monotonic
    time_source.install(outer)
    time_source.restore()
    assert time_source.SHARED.now is time.monotonic


def test_install_takes_explicit_sleeps() -> None:
    """sleep= / async_sleep= override the clock's own methods (instant mode uses this)."""
    slept: list[float] = []
    previous = time_source.install(time.monotonic, sleep=slept.append)
    try:
        time_source.sleep(3.0)
    finally:
        time_source.restore(previous)
    assert slept == [3.0]


def test_install_refuses_what_is_not_a_clock() -> None:
    """A clock is a callable returning seconds."""
    with pytest.raises(TypeError, match="callable"):
        time_source.install(12.0)  # type: ignore[arg-type]


async def test_call_timeout_is_real_time_even_with_a_fake_clock(fake: FakeClock) -> None:
    """call_timeout bounds the call on the event loop's clock; the fake clock is not moved."""

    @circuit_breaker("timed", call_timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await slow()
    assert fake() == 500.0
