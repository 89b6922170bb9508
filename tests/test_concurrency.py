"""Calls in flight: ``max_concurrent`` (fixed and adaptive), FIFO waits, streams holding slots."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    Outcome,
    ThrottledError,
    circuit_breaker,
)
from llm_circuit_breaker._core.concurrency import ADAPTIVE_START, LimiterCore, Signal
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock, frozen_time

# -- the pure core ---------------------------------------------------------------------------


class LimiterMachine(RuleBasedStateMachine):
    """Any sequence of arrivals, finishes and give-ups keeps the limiter's books straight."""

    def __init__(self) -> None:
        super().__init__()
        self.core = LimiterCore("adaptive", ceiling=12)
        self.now = 0.0
        self.running = 0  # calls holding a slot (granted tickets count once claimed)
        self.lined: list[int] = []  # tickets not granted yet, in arrival order
        self.unclaimed: list[int] = []  # tickets granted, waiter not woken yet
        self.last_granted = -1

    def _granted(self, tickets: list[int]) -> None:
        for ticket in tickets:
            assert ticket > self.last_granted  # FIFO: never a later ticket before an earlier
            assert ticket == self.lined.pop(0)
            self.last_granted = ticket
            self.unclaimed.append(ticket)

    @rule(dt=st.floats(0.0, 5.0))
    def arrive(self, dt: float) -> None:
        self.now += dt
        if self.core.take(self.now):
            assert not self.lined
            self.running += 1
        else:
            self.lined.append(self.core.enqueue())

    @precondition(lambda self: self.unclaimed)
    @rule()
    def wake(self) -> None:
        assert self.core.claim(self.unclaimed.pop(0))
        self.running += 1

    @precondition(lambda self: self.running)
    @rule(
        dt=st.floats(0.0, 5.0),
        signal=st.sampled_from([Signal.SUCCESS, Signal.OVERLOAD, Signal.NEUTRAL]),
    )
    def finish(self, dt: float, signal: Signal) -> None:
        self.now += dt
        self.running -= 1
        self._granted(self.core.release(self.now, signal))

    @precondition(lambda self: self.lined or self.unclaimed)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.lined + self.unclaimed))
        if ticket in self.unclaimed:
            self.unclaimed.remove(ticket)
        else:
            self.lined.remove(ticket)
        self._granted(self.core.cancel(ticket, self.now))

    @invariant()
    def books_balance(self) -> None:
        core = self.core
        assert 1 <= core.limit <= core.ceiling
        assert core.in_flight == self.running + len(self.unclaimed)
        assert list(core.queue) == self.lined
        assert core.granted == set(self.unclaimed)
        # nobody waits while a slot is free
        assert not core.queue or core.in_flight >= core.limit


LimiterMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60)
TestLimiterMachine = LimiterMachine.TestCase


def test_a_fixed_limit_never_moves() -> None:
    """A fixed limit ignores overloads and successes alike."""
    core = LimiterCore(3)
    for i in range(20):
        assert core.take(float(i))
        core.release(float(i) + 1.0, Signal.OVERLOAD if i % 2 else Signal.SUCCESS)
    assert core.limit == 3


def test_adaptive_grows_by_one_after_a_busy_window_and_halves_on_overload() -> None:
    """Adaptive: +1 after `limit` successes within the target while the limit was reached;
    an overload halves it, once per round trip."""
    core = LimiterCore("adaptive", ceiling=64)
    assert core.limit == ADAPTIVE_START
    now = 0.0
    for _ in range(3):  # fill the limit, then finish all: one full window each round
        start = core.limit
        for _ in range(start):
            assert core.take(now)
        now += 1.0
        for _ in range(start):
            core.release(now, Signal.SUCCESS)
        assert core.limit == start + 1
    assert core.limit == ADAPTIVE_START + 3
    for _ in range(4):
        core.take(now)
    now += 1.0
    for _ in range(4):  # four overloads of calls that started together: one cut
        core.release(now, Signal.OVERLOAD)
    assert core.limit == (ADAPTIVE_START + 3) // 2


def test_adaptive_does_not_grow_past_the_latency_target_or_when_idle() -> None:
    """Slow successes (beyond the target) and an unreached limit leave the limit where it is."""
    core = LimiterCore("adaptive", ceiling=64, latency_target=1.0)
    for _ in range(50):  # one call at a time: the limit is never reached
        core.take(0.0)
        core.release(0.5, Signal.SUCCESS)
    assert core.limit == ADAPTIVE_START
    for _ in range(10):
        for _ in range(core.limit):
            core.take(0.0)
        for _ in range(core.limit):
            core.release(2.0, Signal.SUCCESS)  # 2 s > the 1 s target
    assert core.limit == ADAPTIVE_START


def test_adaptive_stays_between_one_and_the_ceiling() -> None:
    """Halving stops at 1; growth stops at the ceiling."""
    core = LimiterCore("adaptive", ceiling=5)
    now = 0.0
    for _ in range(10):
        core.take(now)
        now += 1.0
        core.release(now, Signal.OVERLOAD)
    assert core.limit == 1
    for _ in range(200):
        for _ in range(core.limit):
            core.take(now)
        now += 1.0
        for _ in range(core.limit):
            core.release(now, Signal.SUCCESS)
    assert core.limit == 5


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_concurrent": 0}, ValueError),
        ({"max_concurrent": "auto"}, ValueError),
        ({"max_concurrent": 2.5}, TypeError),
        ({"max_concurrent": True}, TypeError),
        ({"max_concurrent_ceiling": 0}, ValueError),
    ],
)
def test_config_rejects_bad_limits(fields: dict[str, object], error: type[Exception]) -> None:
    """A bad `max_concurrent` or ceiling is refused, naming the field."""
    with pytest.raises(error, match="max_concurrent"):
        CircuitBreakerConfig(**fields)  # type: ignore[arg-type]


def test_no_limit_changes_nothing() -> None:
    """Without `max_concurrent` the breaker has no limit and the snapshot says so."""
    breaker = CircuitBreaker("plain")
    assert breaker.concurrency is None
    assert breaker.snapshot()["concurrency"] is None
    assert breaker.enter == breaker._local.enter


# -- threads ---------------------------------------------------------------------------------


def test_threads_never_exceed_the_limit_and_wait_in_line() -> None:
    """Eight threads through a limit of 2: never more than 2 inside, every call made."""
    inside, peak, lock = 0, 0, threading.Lock()
    gate = threading.Event()

    @circuit_breaker("threads", max_concurrent=2, throttle_max_wait=600.0)
    def call() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        gate.wait(60)
        with lock:
            inside -= 1

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    while call.breaker.concurrency["waiting"] < 6:  # type: ignore[index]
        threading.Event().wait(0.001)
    assert call.breaker.concurrency == {
        "limit": 2,
        "in_flight": 2,
        "waiting": 6,
        "mode": "fixed",
    }
    gate.set()
    for t in threads:
        t.join(60)
    assert peak == 2
    assert call.breaker.stats.successes == 8
    assert call.breaker.concurrency["in_flight"] == 0  # type: ignore[index]


def test_no_wait_allowed_refuses_at_once_with_reason_concurrency() -> None:
    """With `throttle_max_wait=0` a call over the limit gets ThrottledError("concurrency"),
    counted as a throttled refusal, without running."""
    ran = []

    @circuit_breaker("nowait", max_concurrent=1, throttle_max_wait=0)
    def stream() -> Iterator[int]:
        ran.append(1)
        return iter([1, 2])

    held = stream()
    with pytest.raises(ThrottledError) as caught:
        stream()
    assert caught.value.reason == "concurrency"
    assert "max_concurrent" in str(caught.value)
    assert len(ran) == 1
    assert stream.breaker.stats.throttle_refusals["concurrency"] == 1
    assert list(held) == [1, 2]  # the stream held the slot until its end
    assert list(stream()) == [1, 2]


def test_a_closed_stream_and_a_failed_call_give_their_slot_back() -> None:
    """Closing a returned stream early, or failing, frees the slot."""

    @circuit_breaker("frees", max_concurrent=1, throttle_max_wait=0)
    def stream(fail: bool = False) -> Iterator[int]:
        if fail:
            raise http_status_error(500)
        return iter([1, 2, 3])

    first = stream()
    next(first)
    first.close()  # type: ignore[attr-defined]
    second = stream()
    assert list(second) == [1, 2, 3]
    with pytest.raises(Exception, match="500"):
        stream(fail=True)
    assert stream.breaker.concurrency["in_flight"] == 0  # type: ignore[index]


def test_a_generator_holds_its_slot_until_it_ends() -> None:
    """A guarded generator takes its slot when iteration starts and frees it at its end."""

    @circuit_breaker("gen", max_concurrent=1, throttle_max_wait=0)
    def numbers() -> Iterator[int]:
        yield 1
        yield 2

    first = numbers()
    assert next(first) == 1
    with pytest.raises(ThrottledError):
        next(numbers())
    assert list(first) == [2]
    assert list(numbers()) == [1, 2]


def test_try_admit_refuses_over_the_limit_and_a_refused_call_frees_nothing() -> None:
    """`try_admit` never waits; an open circuit's refusal gives the slot back."""
    breaker = CircuitBreaker("manual", CircuitBreakerConfig(max_concurrent=1))
    permit = breaker.try_admit()
    assert permit >= 0
    assert breaker.try_admit() == -1
    assert breaker.stats.throttle_refusals["concurrency"] == 1
    breaker.record(permit, Outcome.SUCCESS)
    breaker.force_open()
    assert breaker.try_admit() == -1
    assert breaker.concurrency["in_flight"] == 0  # type: ignore[index]


def test_metrics_only_mode_counts_but_never_waits() -> None:
    """`enabled=False`: calls over the limit are counted and let through."""
    breaker = CircuitBreaker("shadow", CircuitBreakerConfig(max_concurrent=1, enabled=False))
    permits = [breaker.admit(), breaker.admit()]
    assert breaker.stats.throttle_refusals["concurrency"] == 1
    assert breaker.concurrency["in_flight"] == 2  # type: ignore[index]
    for permit in permits:
        breaker.record_success(permit)
    assert breaker.concurrency["in_flight"] == 0  # type: ignore[index]


# -- tasks -----------------------------------------------------------------------------------


def test_tasks_wait_in_fifo_order_without_blocking_the_loop() -> None:
    """Tasks over the limit wait on the loop (others keep running) and run in arrival order."""
    order: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        @circuit_breaker("tasks", max_concurrent=1, throttle_max_wait=600.0)
        async def call(i: int) -> None:
            order.append(i)
            await release.wait()

        tasks = [asyncio.create_task(call(i)) for i in range(5)]
        for _ in range(10):
            await asyncio.sleep(0)  # the loop runs: waiters do not block it
        assert order == [0]
        assert call.breaker.concurrency["waiting"] == 4  # type: ignore[index]
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == [0, 1, 2, 3, 4]


def test_a_cancelled_waiter_leaves_the_line() -> None:
    """Cancelling a waiting task frees its place: the next one gets the slot."""

    async def main() -> None:
        release = asyncio.Event()

        @circuit_breaker("cancel", max_concurrent=1, throttle_max_wait=600.0)
        async def call() -> str:
            await release.wait()
            return "ok"

        holder = asyncio.create_task(call())
        await asyncio.sleep(0)
        doomed = asyncio.create_task(call())
        after = asyncio.create_task(call())
        for _ in range(3):
            await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert call.breaker.concurrency["waiting"] == 1  # type: ignore[index]
        release.set()
        assert await holder == "ok"
        assert await after == "ok"
        assert call.breaker.concurrency == {  # type: ignore[comparison-overlap]
            "limit": 1,
            "in_flight": 0,
            "waiting": 0,
            "mode": "fixed",
        }

    asyncio.run(main())


def test_a_wait_past_throttle_max_wait_is_refused_on_the_breakers_clock() -> None:
    """The wait is bounded on the library's clock: moving a fake clock past
    `throttle_max_wait` refuses the waiter with reason "concurrency"."""

    async def main(clock: FakeClock) -> None:
        release = asyncio.Event()

        @circuit_breaker("bounded", max_concurrent=1, throttle_max_wait=5.0)
        async def call() -> None:
            await release.wait()

        holder = asyncio.create_task(call())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(call())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiter.done()
        clock.advance(5.0)
        with pytest.raises(ThrottledError) as caught:
            await waiter
        assert caught.value.reason == "concurrency"
        release.set()
        await holder
        assert call.breaker.concurrency["in_flight"] == 0  # type: ignore[index]

    with frozen_time() as clock:
        asyncio.run(main(clock))


def test_an_adaptive_breaker_halves_on_529() -> None:
    """`max_concurrent="adaptive"`: a 529 halves the limit."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "adaptive",
        CircuitBreakerConfig(max_concurrent="adaptive", failure_threshold=100),
        clock=clock,
    )
    permits = [breaker.admit() for _ in range(ADAPTIVE_START)]
    clock.advance(1.0)
    for permit in permits:
        breaker.record(permit, Outcome.FAILURE, error=http_status_error(529))
    assert breaker.concurrency == {
        "limit": ADAPTIVE_START // 2,
        "in_flight": 0,
        "waiting": 0,
        "mode": "adaptive",
    }


def test_trio_tasks_wait_for_a_slot() -> None:
    """Under trio, tasks over the limit wait and all finish."""
    trio = pytest.importorskip("trio")
    inside, peak = 0, 0

    @circuit_breaker("trio", max_concurrent=2, throttle_max_wait=600.0)
    async def call() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        inside -= 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(call)

    trio.run(main)
    assert peak == 2
    assert call.breaker.stats.successes == 6


# -- metrics ---------------------------------------------------------------------------------


def test_prometheus_and_opentelemetry_gauges_show_the_limit() -> None:
    """The limit, calls in flight and callers waiting are gauges next to the throttle's, with
    the same names in both exporters; breakers without a limit have none."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry

    from llm_circuit_breaker import BreakerRegistry
    from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
    from llm_circuit_breaker.observability.prometheus import PrometheusCollector

    registry = BreakerRegistry(clock=FakeClock())
    limited = registry.get_or_create("limited", CircuitBreakerConfig(max_concurrent=3))
    registry.get_or_create("free")
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    reader = InMemoryMetricReader()
    OpenTelemetryInstrumentation(
        registry, meter_provider=MeterProvider(metric_readers=[reader])
    ).instrument()
    permits = [limited.admit(), limited.admit()]

    def sample(name: str, breaker: str = "limited") -> float | None:
        return prom.get_sample_value(name, {"breaker": breaker, "scope": ""})

    assert sample("llm_circuit_breaker_concurrency_limit") == 3
    assert sample("llm_circuit_breaker_concurrency_in_flight") == 2
    assert sample("llm_circuit_breaker_concurrency_waiting") == 0
    assert sample("llm_circuit_breaker_concurrency_limit", "free") is None
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: [(p.attributes["breaker"], p.value) for p in metric.data.data_points]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert points["llm_circuit_breaker.concurrency.limit"] == [("limited", 3)]
    assert points["llm_circuit_breaker.concurrency.in_flight"] == [("limited", 2)]
    assert points["llm_circuit_breaker.concurrency.waiting"] == [("limited", 0)]
    for permit in permits:
        limited.record_success(permit)
    assert sample("llm_circuit_breaker_concurrency_in_flight") == 0


# -- breakers on a store ---------------------------------------------------------------------


def test_a_breaker_on_a_sync_store_is_capped_in_this_process() -> None:
    """With a store the limit still counts this process's calls in flight."""
    from llm_circuit_breaker.storage.memory import MemoryStateStore

    breaker = CircuitBreaker(
        "stored", CircuitBreakerConfig(max_concurrent=1, throttle_max_wait=0),
        store=MemoryStateStore(),
    )  # fmt: skip
    permit = breaker.admit()
    with pytest.raises(ThrottledError):
        breaker.admit()
    breaker.record_success(permit)
    breaker.record(breaker.admit(), Outcome.IGNORED)
    assert breaker.concurrency["in_flight"] == 0  # type: ignore[index]


def test_a_breaker_on_an_asyncio_store_is_capped_too(redis_server: Any) -> None:
    """Through redis.asyncio: tasks over the limit wait, then all finish."""
    import redis.asyncio

    from llm_circuit_breaker.storage.redis import RedisStateStore

    async def main() -> None:
        client = redis.asyncio.Redis(port=redis_server.port)
        try:
            await client.flushall()
            breaker = CircuitBreaker(
                "astored",
                CircuitBreakerConfig(max_concurrent=2, throttle_max_wait=600.0),
                store=RedisStateStore(client),
            )
            release = asyncio.Event()

            @circuit_breaker(breaker=breaker)
            async def call() -> None:
                await release.wait()

            tasks = [asyncio.create_task(call()) for _ in range(6)]
            while breaker.concurrency["waiting"] < 4:  # type: ignore[index]
                await asyncio.sleep(0.001)  # the store's round trips take what they take
            assert breaker.concurrency["in_flight"] == 2  # type: ignore[index]
            release.set()
            await asyncio.gather(*tasks)
            assert breaker.concurrency["in_flight"] == 0  # type: ignore[index]
            assert breaker.stats.successes == 6
        finally:
            await client.aclose()

    asyncio.run(main())
