"""Property tests: forced-open and metrics-only are states of the core, and they hold.

* Forced open refuses every call until released, whatever successes, failures or time pass.
* Metrics-only never refuses: what an enforcing circuit refuses, it lets through, counted once
  as a refusal with ``enforced=False``, and its circuit moves exactly as the enforcing one.
* Releasing (``force_closed`` / ``reset``) returns to the state the counts imply: clean counts,
  CLOSED, and from then on the circuit behaves as a new one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
)
from llm_circuit_breaker._core.permits import REJECTED, SHADOW, is_refusal
from llm_circuit_breaker._core.state import BreakerCore, Hold
from llm_circuit_breaker.storage import MemoryStateStore, RedisStateStore
from llm_circuit_breaker.testing import FakeClock

EXAMPLES = 200 if os.environ.get("CI") else 60
CONFIG = CircuitBreakerConfig(
    failure_threshold=3,
    reset_timeout=10.0,
    success_threshold=2,
    half_open_max_calls=2,
    half_open_probe_timeout=30.0,
)
RATE = CircuitBreakerConfig(
    failure_threshold=50,
    failure_rate_threshold=0.5,
    minimum_calls=4,
    window=20.0,
    reset_timeout=5.0,
    slow_call_duration=2.0,
)

# One step: admit a call, report the oldest unreported one (with an outcome, maybe a server's
# hint to stay open), or let time pass.
_WAITS = st.sampled_from([0.5, 3.0, 5.0, 10.0, 31.0, 1e6])
_STEP = st.one_of(
    st.tuples(st.just("admit")),
    st.tuples(
        st.just("report"),
        st.sampled_from(list(Outcome)),
        st.sampled_from([None, None, 1.0, 60.0]),
    ),
    st.tuples(st.just("wait"), _WAITS),
)
_STEPS = st.lists(_STEP, max_size=40)
_CONFIGS = st.sampled_from([CONFIG, RATE])


class _Driven:
    """A core, its clock and its permits not yet reported."""

    def __init__(self, config: CircuitBreakerConfig, now: float = 0.0) -> None:
        self.core = BreakerCore(config)
        self.now = now
        self.permits: list[int] = []

    def step(self, step: tuple[Any, ...]) -> int | None:
        """Apply one step; the permit when it admitted."""
        if step[0] == "admit":
            permit = self.core.admit(self.now)
            self.permits.append(permit)
            return permit
        if step[0] == "report":
            if self.permits:
                self.core.report(self.permits.pop(0), step[1], self.now, open_for=step[2])
            return None
        self.now += step[1]
        return None


def _shape(core: BreakerCore, now: float) -> tuple[object, ...]:
    """What a circuit says about itself (its permits' numbering aside)."""
    return (
        core.state,
        core.hold,
        core.failure_count,
        core.success_count,
        core.retry_after(now),
        core.open_reason,
    )


@settings(max_examples=EXAMPLES, deadline=None)
@given(config=_CONFIGS, before=_STEPS, held=_STEPS, after=_STEPS)
def test_forced_open_refuses_everything_until_released(
    config: CircuitBreakerConfig,
    before: list[tuple[Any, ...]],
    held: list[tuple[Any, ...]],
    after: list[tuple[Any, ...]],
) -> None:
    driven = _Driven(config)
    for step in before:
        driven.step(step)
    driven.core.force_open(driven.now)
    assert driven.core.hold is Hold.FORCED_OPEN
    for step in held:  # successes, failures, hints and time: none moves it
        permit = driven.step(step)
        assert permit is None or permit == REJECTED
        assert driven.core.state is CircuitState.OPEN
        assert driven.core.hold is Hold.FORCED_OPEN and driven.core.held_open
        assert driven.core.retry_after(driven.now) is None
        assert driven.core.open_reason == "forced open"
    driven.core.close(driven.now, "forced closed")
    assert driven.core.hold is Hold.NONE
    assert (driven.core.state, driven.core.failure_count) == (CircuitState.CLOSED, 0)
    # Released, it behaves as a new circuit would from here (its old permits are stale).
    driven.permits.clear()
    fresh = _Driven(config, driven.now)
    for step in after:
        mine, theirs = driven.step(step), fresh.step(step)
        assert (mine is None or is_refusal(mine)) == (theirs is None or is_refusal(theirs))
        assert _shape(driven.core, driven.now) == _shape(fresh.core, fresh.now)


@settings(max_examples=EXAMPLES, deadline=None)
@given(config=_CONFIGS, steps=st.lists(st.one_of(_STEP, st.tuples(st.just("force"))), max_size=60))
def test_metrics_only_core_decides_as_the_enforcing_one_and_refuses_nothing(
    config: CircuitBreakerConfig, steps: list[tuple[Any, ...]]
) -> None:
    enforcing = _Driven(config)
    shadowing = _Driven(dataclasses.replace(config, enabled=False))
    assert (enforcing.core.enforced, enforcing.core.refusal) == (True, REJECTED)
    assert (shadowing.core.enforced, shadowing.core.refusal) == (False, SHADOW)
    for step in steps:
        if step[0] == "force":  # hold both open, or release both
            for driven in (enforcing, shadowing):
                if driven.core.held_open:
                    driven.core.close(driven.now, "forced closed")
                else:
                    driven.core.force_open(driven.now)
            continue
        refused, let_through = enforcing.step(step), shadowing.step(step)
        if refused == REJECTED:
            assert let_through == SHADOW  # would have refused: a permit that lets it through
        else:
            assert let_through == refused  # the same permit, or both not an admission
        assert _shape(shadowing.core, shadowing.now) == _shape(enforcing.core, enforcing.now)


# -- through the breaker: the shells keep what the core decides ------------------------------


def _observer() -> Any:
    heard: list[bool] = []

    class Observer:
        def rejected(self, breaker: object, enforced: bool) -> None:
            heard.append(enforced)

    observer = Observer()
    observer.heard = heard  # type: ignore[attr-defined]
    return observer


_STORES: dict[str, Callable[[FakeClock], Any]] = {
    "no store": lambda clock: None,
    "memory store": lambda clock: MemoryStateStore(clock=clock),
}
_CALL = st.one_of(
    st.tuples(st.just("call"), st.sampled_from(list(Outcome))),
    st.tuples(st.just("wait"), _WAITS),
    st.tuples(st.just("force_open")),
    st.tuples(st.just("force_closed")),
    st.tuples(st.just("reset")),
)


@pytest.mark.parametrize("where", list(_STORES))
@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(steps=st.lists(_CALL, max_size=40))
def test_breakers_metrics_only_counts_would_be_refusals_once(
    where: str, steps: list[tuple[Any, ...]]
) -> None:
    clock = FakeClock()
    enforcing = CircuitBreaker("enforcing", CONFIG, clock=clock, store=_STORES[where](clock))
    shadow_config = dataclasses.replace(CONFIG, enabled=False)
    shadowing = CircuitBreaker("shadowing", shadow_config, clock=clock, store=_STORES[where](clock))
    heard, heard_enforcing = _observer(), _observer()
    shadowing.add_observer(heard)
    enforcing.add_observer(heard_enforcing)
    forced = ran = 0
    for step in steps:
        if step[0] == "wait":
            clock.advance(step[1])
            continue
        if step[0] != "call":
            for breaker in (enforcing, shadowing):
                getattr(breaker, step[0])()
            forced = step[0] == "force_open"
            continue
        try:
            permit = enforcing.admit()
        except CircuitOpenError as error:
            if forced:
                assert error.retry_after is None
        else:
            assert not forced, "a forced-open circuit admitted a call"
            enforcing.record(permit, step[1])
        shadow_permit = shadowing.admit()  # never raises
        shadowing.record(shadow_permit, step[1])
        ran += 1
        assert shadowing.state is enforcing.state
        assert shadowing.failure_count == enforcing.failure_count
    refused, counts = enforcing.stats, shadowing.stats
    assert counts.rejections == refused.rejections == len(heard.heard)
    assert heard.heard == [False] * len(heard.heard)
    assert heard_enforcing.heard == [True] * refused.rejections
    # Each call counted once: a let-through refusal is not also a success or a failure.
    assert counts.calls + counts.rejections == refused.calls + refused.rejections == ran


def test_a_forced_open_redis_circuit_in_metrics_only_mode_lets_every_call_through(
    redis_client: redis.Redis,
) -> None:
    """The store speaks only REJECTED; the breaker's core turns it into a let-through."""
    clock = FakeClock(1000.0)
    store = RedisStateStore(redis_client, prefix="states", clock=clock)
    config = CircuitBreakerConfig(failure_threshold=2, enabled=False)
    shadowing = CircuitBreaker("held", config, clock=clock, store=store)
    enforcing = CircuitBreaker("held", CircuitBreakerConfig(failure_threshold=2), store=store)
    heard = _observer()
    shadowing.add_observer(heard)
    enforcing.force_open()
    for outcome in [Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS, Outcome.IGNORED] * 2:
        clock.advance(3600.0)
        with pytest.raises(CircuitOpenError) as refused:
            enforcing.admit()
        assert refused.value.retry_after is None
        shadowing.record(shadowing.admit(), outcome)  # let through, counted as refused
        assert shadowing.state is CircuitState.OPEN
    stats = shadowing.stats
    assert (stats.rejections, stats.calls) == (8, 0)
    assert heard.heard == [False] * 8
    shadowing.force_closed()
    assert enforcing.state is CircuitState.CLOSED
    enforcing.record(enforcing.admit(), Outcome.SUCCESS)
    shadowing.record(shadowing.admit(), Outcome.SUCCESS)
    assert (shadowing.stats.calls, shadowing.stats.rejections) == (1, 8)
