"""@with_retry: what is retried, how long it waits, and what the caller finally sees."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import tenacity

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    HTTPStatusError,
    RateLimitError,
    ServerError,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock


def _scripted(*outcomes: BaseException | str) -> tuple[Callable[[], str], list[int]]:
    """A function that raises or returns each outcome in turn, counting its calls."""
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, calls


def _retry(clock: FakeClock, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    kwargs.setdefault("jitter", False)
    return with_retry(sleep=clock.sleep, async_sleep=clock.async_sleep, clock=clock, **kwargs)


def test_exponential_schedule_then_original_error(clock: FakeClock) -> None:
    """max_retries=3: four attempts, waits 1, 2, 4, then the original exception (no RetryError)."""
    error = http_status_error(503)
    call, calls = _scripted(error)
    with pytest.raises(HTTPStatusError) as caught:
        _retry(clock, max_retries=3)(call)()
    assert caught.value is error
    assert len(calls) == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]


def test_max_delay_caps_the_backoff(clock: FakeClock) -> None:
    """The delay before retry n is min(max_delay, initial * factor ** (n-1))."""
    call, _ = _scripted(ConnectionError())
    with pytest.raises(ConnectionError):
        _retry(clock, max_retries=5, initial_delay=1.0, backoff_factor=3.0, max_delay=10.0)(call)()
    assert clock.sleeps == [1.0, 3.0, 9.0, 10.0, 10.0]


def test_full_jitter_stays_within_bounds(clock: FakeClock) -> None:
    """With jitter each wait is drawn from [0, computed delay]."""
    call, _ = _scripted(TimeoutError())
    with pytest.raises(TimeoutError):
        _retry(clock, max_retries=6, jitter=True, max_delay=8.0)(call)()
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, ceilings, strict=True))
    assert len(set(clock.sleeps)) > 1


def test_success_after_retries(clock: FakeClock) -> None:
    """A call that recovers returns its value."""
    call, calls = _scripted(http_status_error(502), http_status_error(504), "ok")
    assert _retry(clock)(call)() == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after": "abc"}, 1.0),
    ],
)
def test_server_hint_replaces_the_delay(
    clock: FakeClock, headers: dict[str, str], wait: float
) -> None:
    """A valid hint <= max_delay is waited exactly; a bad one falls back to backoff."""
    call, _ = _scripted(http_status_error(429, headers), "ok")
    assert _retry(clock)(call)() == "ok"
    assert clock.sleeps == [wait]


def test_hint_beyond_max_delay_ends_retries(clock: FakeClock) -> None:
    """A hint longer than max_delay is raised at once (no sleep at all)."""
    call, calls = _scripted(http_status_error(429, {"retry-after": "121"}), "ok")
    with pytest.raises(RateLimitError):
        _retry(clock, max_delay=120.0)(call)()
    assert (len(calls), clock.sleeps) == (1, [])


def test_hints_ignored_when_asked(clock: FakeClock) -> None:
    """respect_retry_after=False uses the backoff and retries past long hints."""
    call, _ = _scripted(http_status_error(429, {"retry-after": "500"}), "ok")
    assert _retry(clock, respect_retry_after=False)(call)() == "ok"
    assert clock.sleeps == [1.0]


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (http_status_error(503, {"x-should-retry": "false"}), False),
        (http_status_error(400, {"x-should-retry": "true"}), True),
        (http_status_error(429, {"x-should-retry": "true", "retry-after": "300"}), False),
        (
            http_status_error(
                429, {}, {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}
            ),
            False,
        ),
        (
            http_status_error(
                429,
                {},
                {
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "details": {"error_code": "enforced_spend_limit_reached"},
                    },
                },
            ),
            False,
        ),
        (http_status_error(402, {}, {"type": "error", "error": {"type": "billing_error"}}), False),
        (http_status_error(408), True),
        (http_status_error(409), True),
        (
            http_status_error(529, {}, {"type": "error", "error": {"type": "overloaded_error"}}),
            True,
        ),
        (http_status_error(501), False),
        (http_status_error(400, {}, {"error": {"code": "context_length_exceeded"}}), False),
        (http_status_error(401), False),
        (http_status_error(404), False),
        (http_status_error(422), False),
        (ConnectionError(), True),
        (TimeoutError(), True),
        (KeyError("bug"), False),
        (ValueError("bug"), False),
        (CircuitOpenError("x", 1.0), False),
    ],
)
def test_what_is_retried(clock: FakeClock, error: BaseException, retried: bool) -> None:
    """The classification table: quota, long hints, x-should-retry, 409, 4xx and 5xx."""
    call, calls = _scripted(error, "ok")
    wrapped = _retry(clock, max_delay=60.0)(call)
    if retried:
        assert wrapped() == "ok"
    else:
        with pytest.raises(type(error)):
            wrapped()
    assert len(calls) == (2 if retried else 1)


def test_own_status_list_replaces_the_default(clock: FakeClock) -> None:
    """retry_on_status_codes replaces the defaults: a 500 is not retried with (503,)."""
    call, calls = _scripted(http_status_error(500), "ok")
    with pytest.raises(HTTPStatusError):
        _retry(clock, retry_on_status_codes=(503,))(call)()
    call, calls = _scripted(http_status_error(501), "ok")
    assert _retry(clock, retry_on_status_codes=(501,))(call)() == "ok"
    assert len(calls) == 2


def test_retry_on_adds_types(clock: FakeClock) -> None:
    """retry_on adds exception types to what is retried."""

    class Flaky(Exception):
        pass

    call, calls = _scripted(Flaky(), "ok")
    assert _retry(clock, retry_on=(Flaky,))(call)() == "ok"
    assert len(calls) == 2


def test_deadline_starts_no_sleep_past_it(clock: FakeClock) -> None:
    """deadline: no wait starts that would end past the budget; attempts' time counts."""

    def slow_failure() -> None:
        clock.advance(3.0)  # each attempt takes 3 s
        raise TimeoutError

    with pytest.raises(TimeoutError):
        _retry(clock, max_retries=10, deadline=12.0)(slow_failure)()
    # t=3 fail, sleep 1 -> 4, t=7 fail, sleep 2 -> 9, t=12 fail: sleeping 4 would pass 12.
    assert clock.sleeps == [1.0, 2.0]
    assert clock() - 1000.0 == 12.0


def test_first_attempt_does_not_enter_tenacity(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """A call that succeeds first time never touches tenacity."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity entered")

    monkeypatch.setattr(tenacity.Retrying, "copy", forbidden)
    monkeypatch.setattr(tenacity.AsyncRetrying, "copy", forbidden)
    assert _retry(clock)(lambda: "fast")() == "fast"

    async def afast() -> str:
        return "afast"

    assert asyncio.run(_retry(clock)(afast)()) == "afast"


def test_on_retry_and_log(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """on_retry(attempt, exc, delay) before each wait, and one INFO line without secrets."""
    seen: list[tuple[int, str, float]] = []
    error = http_status_error(
        503, {"authorization": "Bearer sk-secret-123456789"}, "Bearer sk-secret-123456789 down"
    )
    call, _ = _scripted(error, error, "ok")
    with caplog.at_level(logging.INFO, logger="llm_circuit_breaker"):
        _retry(clock, on_retry=lambda n, exc, delay: seen.append((n, type(exc).__name__, delay)))(
            call
        )()
    assert seen == [(1, "ServerError", 1.0), (2, "ServerError", 2.0)]
    retry_lines = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(retry_lines) == 2
    assert "sk-secret" not in caplog.text


def test_stacked_on_circuit_breaker(clock: FakeClock) -> None:
    """with_retry outside circuit_breaker: each attempt counts; retrying stops once it opens."""
    breaker = CircuitBreaker("stack", CircuitBreakerConfig(failure_threshold=2), clock=clock)
    call, calls = _scripted(http_status_error(503))
    guarded = _retry(clock, max_retries=5)(circuit_breaker(breaker=breaker)(call))
    with pytest.raises(CircuitOpenError) as caught:
        guarded()
    assert len(calls) == 2  # no third attempt: the circuit opened
    assert breaker.state is CircuitState.OPEN
    assert breaker.stats.retries == 1  # no sleep once the breaker under us was open
    assert isinstance(caught.value.__cause__, ServerError)  # chained to what tripped it
    assert caught.value.reason == "2 consecutive failures"
    assert guarded.breaker is breaker  # .breaker survives the outer decorator


def test_quota_error_opens_the_breaker_now(clock: FakeClock) -> None:
    """A quota 429 is not retried and opens the circuit at once for reset_timeout."""
    breaker = CircuitBreaker(
        "quota", CircuitBreakerConfig(failure_threshold=5, reset_timeout=30.0), clock=clock
    )
    quota = http_status_error(
        429, {}, {"error": {"code": "insufficient_quota", "type": "insufficient_quota"}}
    )
    call, calls = _scripted(quota)
    with pytest.raises(RateLimitError):
        _retry(clock)(circuit_breaker(breaker=breaker)(call))()
    assert (len(calls), breaker.state) == (1, CircuitState.OPEN)
    assert breaker.retry_after == 30.0


def test_long_hint_opens_the_breaker_for_the_hint(clock: FakeClock) -> None:
    """A counted failure whose hint >= reset_timeout opens the circuit for the hinted time."""
    breaker = CircuitBreaker("hint", CircuitBreakerConfig(reset_timeout=30.0), clock=clock)
    call, _ = _scripted(http_status_error(503, {"retry-after": "90"}))
    with pytest.raises(HTTPStatusError):
        _retry(clock, max_delay=30.0)(circuit_breaker(breaker=breaker)(call))()
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_after == 90.0


def test_409_is_retried_but_not_a_breaker_failure(clock: FakeClock) -> None:
    """409 is in the retried list, yet the breaker does not count it."""
    breaker = CircuitBreaker("conflict", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    call, calls = _scripted(http_status_error(409), "ok")
    assert _retry(clock)(circuit_breaker(breaker=breaker)(call))() == "ok"
    assert (len(calls), breaker.state, breaker.stats.ignored) == (2, CircuitState.CLOSED, 1)


async def test_async_retry_and_loop_not_blocked() -> None:
    """Async retries sleep with asyncio: other tasks run during the waits."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    attempts = 0

    @with_retry(max_retries=2, initial_delay=0.02, jitter=False)
    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError
        return "ok"

    task = asyncio.create_task(ticker())
    assert inspect.iscoroutinefunction(flaky)
    assert await flaky() == "ok"
    task.cancel()
    assert attempts == 3
    assert ticks >= 10  # the loop kept running through 60 ms of waits


async def test_async_exhausted_raises_original(clock: FakeClock) -> None:
    """Async: the original exception, never tenacity.RetryError."""
    error = http_status_error(502)

    async def fail() -> None:
        raise error

    with pytest.raises(HTTPStatusError) as caught:
        await _retry(clock, max_retries=2)(fail)()
    assert caught.value is error
    assert clock.sleeps == [1.0, 2.0]


def test_generator_retried_only_before_first_item(clock: FakeClock) -> None:
    """A stream failing before its first item is retried; after it, the error is raised."""
    starts = 0

    def stream(fail_after: int) -> Iterator[int]:
        nonlocal starts
        starts += 1
        if starts == 1:
            raise ConnectionError("before any item")
        yield from range(fail_after)
        raise ConnectionError("mid-stream")

    retried = _retry(clock)(stream)
    assert inspect.isgeneratorfunction(retried)
    seen: list[int] = []
    with pytest.raises(ConnectionError, match="mid-stream"):
        for item in retried(2):
            seen.append(item)
    assert (seen, starts) == ([0, 1], 2)


async def test_async_generator_retried_only_before_first_item(clock: FakeClock) -> None:
    """Same rule for async generators."""
    starts = 0

    async def stream() -> AsyncIterator[str]:
        nonlocal starts
        starts += 1
        if starts < 3:
            raise http_status_error(529)
        yield "a"
        raise ConnectionError("mid-stream")

    seen: list[str] = []
    with pytest.raises(ConnectionError):
        async for item in _retry(clock)(stream)():
            seen.append(item)
    assert (seen, starts) == (["a"], 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"initial_delay": -0.1}, "initial_delay"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"initial_delay": 5.0, "max_delay": 1.0}, "max_delay"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -1.0}, "deadline"),
        ({"retry_on_status_codes": (99,)}, "retry_on_status_codes"),
        ({"retry_on_status_codes": (600,)}, "retry_on_status_codes"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    """Bad arguments are ValueErrors naming the argument."""
    with pytest.raises(ValueError, match=name):
        with_retry(**kwargs)
