"""Property test: random interleavings of admissions, outcomes and time keep the invariants."""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
    ThrottledError,
)
from llm_circuit_breaker._core.state import Hold
from llm_circuit_breaker.testing import FakeClock

# CI runs >= 10k steps (200 examples x 50 steps); a local run is quicker.
EXAMPLES = 200 if os.environ.get("CI") else 60


class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker with arbitrary, interleaved calls and checks it never lies."""

    permits = Bundle("permits")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.config = CircuitBreakerConfig(
            failure_threshold=3,
            reset_timeout=10.0,
            success_threshold=2,
            half_open_max_calls=2,
            half_open_probe_timeout=30.0,
        )
        self.breaker = CircuitBreaker("prop", self.config, clock=self.clock)
        self.admitted = 0
        self.refused = 0
        self.reported = 0
        self.forced = False  # held open by force_open() until force_closed() or reset()

    @rule(target=permits)
    def admit(self) -> int:
        state = self.breaker.state
        try:
            permit = self.breaker.admit()
        except CircuitOpenError as refused:
            assert state is not CircuitState.CLOSED
            assert refused.retry_after is None or refused.retry_after >= 0
            assert (refused.retry_after is None) is (state is CircuitState.OPEN and self.forced)
            self.refused += 1
            return -1
        except ThrottledError as throttled:  # rate limits paused the throttle past its wait
            assert throttled.retry_after > self.config.throttle_max_wait
            return -1
        assert not self.forced, "a forced-open circuit admitted a call"
        self.admitted += 1
        return permit

    @rule(permit=consumes(permits), outcome=st.sampled_from(list(Outcome)))
    def report(self, permit: int, outcome: Outcome) -> None:
        if permit < 0:
            return
        self.breaker.record(permit, outcome)
        self.reported += 1

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 31.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.forced = False

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.forced = True

    @rule()
    def force_closed(self) -> None:
        self.breaker.force_closed()
        self.forced = False
        assert (self.breaker.state, self.breaker.failure_count) == (CircuitState.CLOSED, 0)

    @invariant()
    def held_open_while_forced(self) -> None:
        core = self.breaker._local.core
        assert (core.hold is Hold.FORCED_OPEN) is self.forced
        if self.forced:
            assert self.breaker.state is CircuitState.OPEN
            assert self.breaker.retry_after is None

    @invariant()
    def counts_match_the_state(self) -> None:
        state = self.breaker.state
        core = self.breaker._local.core  # the core itself: in-flight probes
        if state is CircuitState.CLOSED:
            assert 0 <= self.breaker.failure_count < self.config.failure_threshold
            assert self.breaker.success_count == 0
        elif state is CircuitState.HALF_OPEN:
            assert self.breaker.failure_count == 0
            assert 0 <= self.breaker.success_count < self.config.success_threshold
            assert len(core._inflight or ()) <= self.config.half_open_max_calls
        else:
            assert self.breaker.success_count == 0

    @invariant()
    def statistics_add_up(self) -> None:
        stats = self.breaker.stats
        counted = stats.successes + stats.failures + stats.ignored + stats.throttled
        assert stats.calls == counted == self.reported
        assert stats.rejections == self.refused


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=EXAMPLES, stateful_step_count=50, deadline=None)
