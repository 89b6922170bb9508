"""One hook protocol for listeners and observers: every method optional, one order."""

from __future__ import annotations

import logging

import pytest

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from llm_circuit_breaker._core.state import CircuitState, Outcome
from llm_circuit_breaker.breaker.telemetry import StateChange, ThrottleEvent


class Hears:
    """A hook with only some of the methods."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def changed(self, event: StateChange | ThrottleEvent) -> None:
        self.heard.append(f"changed {event.new}")

    def rejected(self, breaker: object, enforced: bool) -> None:
        self.heard.append(f"rejected {enforced}")


def test_an_observer_may_hear_state_changes_and_skip_the_rest() -> None:
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1))
    hook, order = Hears(), []
    breaker.add_listener(lambda event: order.append("listener"))
    breaker.add_observer(hook)
    breaker.add_listener(lambda event: order.append("second listener"))
    breaker.record(breaker.admit(), Outcome.FAILURE)
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    breaker.record_retry(1, ValueError("x"), 0.1)  # no retried(): nothing to call
    assert hook.heard == ["changed OPEN", "rejected True"]
    assert order == ["listener", "second listener"]  # in the order added


def test_removing_a_listener_keeps_the_others_and_refuses_a_stranger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1))
    heard: list[CircuitState] = []

    def listener(event: StateChange | ThrottleEvent) -> None:
        heard.append(event.new)  # type: ignore[arg-type]

    def broken(event: object) -> None:
        raise RuntimeError("bug")

    breaker.add_listener(broken)
    breaker.add_listener(listener)
    breaker.add_listener(listener)
    breaker.remove_listener(listener)  # one of the two goes
    with pytest.raises(ValueError, match="not a listener"):
        breaker.remove_listener(print)
    with caplog.at_level(logging.ERROR, logger="llm_circuit_breaker"):
        breaker.record(breaker.admit(), Outcome.FAILURE)
    assert heard == [CircuitState.OPEN]
    assert "state-change listener" in caplog.text and "broken" in caplog.text
