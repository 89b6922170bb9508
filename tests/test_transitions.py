"""The state machine's transitions, table-driven, with an injected clock (no sleeping)."""

from __future__ import annotations

from typing import Any

import pytest

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
)
from llm_circuit_breaker.testing import FakeClock
from tests.vectors import VECTORS, Step, run_vector


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector(name: str, clock: FakeClock) -> None:
    """Each scripted sequence of outcomes leaves exactly the expected state behind."""
    fields, steps = VECTORS[name]
    breaker = CircuitBreaker("v", CircuitBreakerConfig(**fields), clock=clock)
    run_vector(breaker, clock, steps)


def _breaker(clock: FakeClock, **fields: Any) -> CircuitBreaker:
    return CircuitBreaker("t", CircuitBreakerConfig(**fields), clock=clock)


def _fail(breaker: CircuitBreaker, times: int = 1, **kwargs: Any) -> None:
    for _ in range(times):
        breaker.record(breaker.admit(), Outcome.FAILURE, **kwargs)


def test_defaults_match_the_spec() -> None:
    """The defaults are those of the table in docs/reference/configuration.md."""
    config = CircuitBreakerConfig()
    assert (config.failure_threshold, config.reset_timeout, config.success_threshold) == (
        5,
        30.0,
        3,
    )
    assert (config.timeout, config.half_open_max_calls, config.half_open_probe_timeout) == (
        10.0,
        1,
        60.0,
    )
    assert config.failure_rate_threshold is config.window is config.minimum_calls is None
    assert config.slow_call_duration is None
    assert CircuitState.HALF_OPEN == "HALF_OPEN"


def test_reading_state_after_reset_timeout_says_half_open(clock: FakeClock) -> None:
    """OPEN -> HALF_OPEN needs no call: reading .state is enough."""
    breaker = _breaker(clock, failure_threshold=1, reset_timeout=30.0)
    _fail(breaker)
    clock.advance(30.0)
    assert breaker.state is CircuitState.HALF_OPEN


def test_open_circuit_rejects_with_retry_after(clock: FakeClock) -> None:
    """A refused call says how long until a probe will be admitted."""
    breaker = _breaker(clock, failure_threshold=1, reset_timeout=30.0)
    _fail(breaker)
    clock.advance(12.5)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit()
    assert caught.value.name == "t"
    assert caught.value.retry_after == pytest.approx(17.5)


@pytest.mark.parametrize("max_calls", [1, 3])
def test_half_open_admits_exactly_max_calls(clock: FakeClock, max_calls: int) -> None:
    """HALF_OPEN admits half_open_max_calls probes at once and refuses the rest."""
    breaker = _breaker(clock, failure_threshold=1, reset_timeout=1.0, half_open_max_calls=max_calls)
    _fail(breaker)
    clock.advance(1.0)
    permits = [breaker.admit() for _ in range(max_calls)]
    assert len(set(permits)) == max_calls
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    breaker.record(permits[0], Outcome.IGNORED)
    breaker.admit()  # the ignored probe freed its slot


def test_probe_lease_expires(clock: FakeClock) -> None:
    """A probe that never reports frees its slot after half_open_probe_timeout."""
    breaker = _breaker(clock, failure_threshold=1, reset_timeout=1.0, half_open_probe_timeout=60.0)
    _fail(breaker)
    clock.advance(1.0)
    hung = breaker.admit()
    clock.advance(59.0)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit()
    assert caught.value.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    fresh = breaker.admit()
    breaker.record_success(hung)  # the expired lease reports late: ignored
    assert breaker.success_count == 0
    breaker.record_success(fresh)
    assert breaker.success_count == 1


def test_stale_outcomes_cannot_move_the_new_state(clock: FakeClock) -> None:
    """A slow call admitted in CLOSED reports after the circuit changed: it is ignored."""
    breaker = _breaker(clock, failure_threshold=2, reset_timeout=1.0, success_threshold=1)
    slow_success, slow_failure = breaker.admit(), breaker.admit()
    _fail(breaker, 2)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.0)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.record_success(slow_success)
    breaker.record(slow_failure, Outcome.FAILURE)
    assert (breaker.state, breaker.success_count) == (CircuitState.HALF_OPEN, 0)
    assert breaker.stats.failures == 3  # statistics still count what happened


def test_server_directed_open_uses_the_hint(clock: FakeClock) -> None:
    """A failure carrying a long hint opens the circuit now, for the hinted time."""
    breaker = _breaker(clock, failure_threshold=5, reset_timeout=30.0)
    _fail(breaker, open_for=120.0, why="server asked to wait 120s")
    assert breaker.state is CircuitState.OPEN
    clock.advance(119.0)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.0)
    assert breaker.state is CircuitState.HALF_OPEN


def test_failed_probe_with_hint_waits_the_longer_time(clock: FakeClock) -> None:
    """A probe failure reopens for max(reset_timeout, hint)."""
    breaker = _breaker(clock, failure_threshold=1, reset_timeout=10.0)
    _fail(breaker)
    clock.advance(10.0)
    _fail(breaker, open_for=50.0)
    clock.advance(49.0)
    assert breaker.state is CircuitState.OPEN


def test_failure_rate_window_opens(clock: FakeClock) -> None:
    """With failure_rate_threshold, the share of failures over the window opens the circuit."""
    breaker = _breaker(
        clock, failure_threshold=100, failure_rate_threshold=0.5, window=10.0, minimum_calls=4
    )
    for outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS):
        breaker.record(breaker.admit(), outcome)
    assert breaker.state is CircuitState.CLOSED  # 3 calls < minimum_calls
    _fail(breaker)
    assert breaker.state is CircuitState.OPEN  # 2 of 4 failed


def test_failure_rate_window_forgets_old_calls(clock: FakeClock) -> None:
    """Failures older than the window no longer count."""
    breaker = _breaker(
        clock, failure_threshold=100, failure_rate_threshold=0.5, window=10.0, minimum_calls=2
    )
    _fail(breaker)
    clock.advance(11.0)
    breaker.record_success(breaker.admit())
    breaker.record_success(breaker.admit())
    _fail(breaker)
    assert breaker.state is CircuitState.CLOSED  # 1 of 3 in the window


def test_slow_call_counts_as_failure(clock: FakeClock) -> None:
    """With slow_call_duration, a success slower than that is a failure."""
    breaker = _breaker(clock, failure_threshold=2, slow_call_duration=1.0)
    permit = breaker.admit()
    clock.advance(1.5)
    breaker.record_success(permit)
    assert breaker.failure_count == 1
    permit = breaker.admit()
    clock.advance(0.5)
    breaker.record_success(permit)
    assert breaker.failure_count == 0
    assert breaker.stats.failures == 1


def test_force_open_holds_until_reset(clock: FakeClock) -> None:
    """force_open holds the circuit open with no probes; reset and force_closed end it."""
    breaker = _breaker(clock, reset_timeout=1.0)
    breaker.force_open()
    clock.advance(3600.0)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit()
    assert caught.value.retry_after is None
    breaker.force_closed()
    assert breaker.state is CircuitState.CLOSED
    breaker.force_open()
    breaker.reset()
    assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 0)


def test_reset_clears_failure_count(clock: FakeClock) -> None:
    """reset() closes the circuit and forgets pending failures."""
    breaker = _breaker(clock, failure_threshold=3)
    _fail(breaker, 2)
    breaker.reset()
    _fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("F", "CLOSED", 1, 0)], {"failures": 1, "calls": 1}),
        ([("S", "CLOSED", 0, 0), ("I", "CLOSED", 0, 0)], {"successes": 1, "ignored": 1}),
    ],
)
def test_stats_count_outcomes(
    clock: FakeClock, steps: list[Step], expected: dict[str, int]
) -> None:
    """Statistics count every outcome."""
    breaker = _breaker(clock)
    run_vector(breaker, clock, steps)
    stats = breaker.stats
    for key, value in expected.items():
        assert getattr(stats, key) == value


@pytest.mark.parametrize(
    ("permit", "outcome", "open_for", "error"),
    [
        ("1", Outcome.FAILURE, None, TypeError),
        (0, "failure", None, TypeError),
        (0, Outcome.FAILURE, -1.0, ValueError),
        (0, Outcome.FAILURE, float("nan"), ValueError),
    ],
)
def test_malformed_reports_leave_the_state_alone(
    clock: FakeClock, permit: Any, outcome: Any, open_for: Any, error: type[Exception]
) -> None:
    """A report of the wrong shape is refused with a clear error and changes nothing."""
    breaker = _breaker(clock, failure_threshold=1)
    with pytest.raises(error):
        breaker.record(permit, outcome, open_for=open_for)
    assert (breaker.state, breaker.failure_count, breaker.stats.calls) == (
        CircuitState.CLOSED,
        0,
        0,
    )
