"""Concurrency: threads and asyncio tasks hammering one breaker never corrupt it."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import tracemalloc
from collections.abc import Callable

import pytest

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
    circuit_breaker,
)
from llm_circuit_breaker.testing import FakeClock


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_keep_exact_counts() -> None:
    """16 threads x 10k guarded calls (half failing) are all counted, none lost."""
    breaker = CircuitBreaker("race", CircuitBreakerConfig(failure_threshold=10**9))

    @circuit_breaker(breaker=breaker)
    def call(fail: bool) -> None:
        if fail:
            raise ConnectionError("down")

    def work(_: int) -> None:
        for i in range(10_000):
            try:
                call(i % 2 == 1)
            except ConnectionError:
                pass

    _run_threads(16, work)
    stats = breaker.stats
    assert (stats.calls, stats.successes, stats.failures) == (160_000, 80_000, 80_000)
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("max_calls", [1, 4])
def test_threads_racing_in_half_open_admit_exactly_max_calls(
    clock: FakeClock, max_calls: int
) -> None:
    """32 threads released at once into HALF_OPEN: exactly half_open_max_calls get through."""
    config = CircuitBreakerConfig(
        failure_threshold=1, reset_timeout=1.0, half_open_max_calls=max_calls
    )
    breaker = CircuitBreaker("race", config, clock=clock)
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(1.0)
    barrier = threading.Barrier(32)
    admitted: list[int] = []
    refused: list[int] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            breaker.admit()
        except CircuitOpenError:
            refused.append(i)
        else:
            admitted.append(i)

    _run_threads(32, work)
    assert (len(admitted), len(refused)) == (max_calls, 32 - max_calls)


async def test_a_thousand_tasks_get_exactly_one_probe(clock: FakeClock) -> None:
    """1,000 asyncio tasks racing in HALF_OPEN: exactly one probe runs the wrapped call."""
    breaker = CircuitBreaker("tasks", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(30.0)
    release = asyncio.Event()
    ran = 0

    @circuit_breaker(breaker=breaker)
    async def probe() -> str:
        nonlocal ran
        ran += 1
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(probe()) for _ in range(1000)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert ran == 1
    assert results.count("ok") == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 999


async def test_cancelled_probe_frees_its_slot(clock: FakeClock) -> None:
    """Cancelling the probe releases the HALF_OPEN slot at once; it is not a failure."""
    breaker = CircuitBreaker("cancel", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(30.0)
    started = asyncio.Event()

    @circuit_breaker(breaker=breaker)
    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    with pytest.raises(CircuitOpenError):
        await hang()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.record_success(breaker.admit())  # the slot is free again
    assert breaker.stats.ignored == 1


async def test_cancelled_call_in_closed_is_not_a_failure() -> None:
    """A call cancelled in CLOSED neither counts as a failure nor resets the count."""
    breaker = CircuitBreaker("cancel", CircuitBreakerConfig(failure_threshold=2))
    breaker.record(breaker.admit(), Outcome.FAILURE)

    @circuit_breaker(breaker=breaker)
    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 1)


def test_lock_is_not_held_during_the_call() -> None:
    """A call blocked inside the wrapped function does not block other callers."""
    breaker = CircuitBreaker("nolock")
    inside = threading.Event()
    leave = threading.Event()

    @circuit_breaker(breaker=breaker)
    def block() -> None:
        inside.set()
        leave.wait(5)

    @circuit_breaker(breaker=breaker)
    def quick() -> str:
        return "done"

    thread = threading.Thread(target=block)
    thread.start()
    assert inside.wait(5)
    breaker.reset()  # would deadlock if the lock spanned the call
    assert quick() == "done"
    leave.set()
    thread.join()


def test_rejections_retain_no_memory(clock: FakeClock) -> None:
    """10k refused calls leave (almost) nothing allocated behind."""
    breaker = CircuitBreaker("mem", CircuitBreakerConfig(failure_threshold=1), clock=clock)

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        call()

    def refuse(times: int) -> None:
        for _ in range(times):
            try:
                call()
            except CircuitOpenError:
                pass

    refuse(100)  # warm caches
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    refuse(10_000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 10_000 * 8, f"{grown} bytes retained by 10k rejections"
    assert breaker.stats.rejections == 10_100


async def test_refusals_leave_no_reference_cycle(clock: FakeClock) -> None:
    """A refused call's error is freed by reference counting alone (no cycle for the GC)."""
    import weakref

    breaker = CircuitBreaker("cycle", clock=clock)
    breaker.force_open()

    @circuit_breaker(breaker=breaker)
    def sync_call() -> None: ...

    @circuit_breaker(breaker=breaker)
    async def async_call() -> None: ...

    refs = []
    gc.disable()
    try:
        for call in (sync_call, async_call, breaker.admit):
            try:
                result = call()
                if asyncio.iscoroutine(result):
                    await result
            except CircuitOpenError as refused:
                refs.append(weakref.ref(refused))
        assert len(refs) == 3
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()


def test_refusals_racing_force_open_never_say_infinity() -> None:
    """retry_after is a finite float or None, even while force_open() races with refusals."""
    breaker = CircuitBreaker("inf", CircuitBreakerConfig(failure_threshold=1))
    seen: set[object] = set()
    stop = threading.Event()

    def refuse() -> None:
        while not stop.is_set():
            entry = breaker.enter()
            if isinstance(entry, CircuitOpenError):
                seen.add(
                    entry.retry_after
                    if entry.retry_after is None
                    else math.isfinite(entry.retry_after)
                )

    threads = [threading.Thread(target=refuse) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(300):
        breaker.force_open()
        breaker.reset()
        breaker.record(breaker.admit(), Outcome.FAILURE)
    stop.set()
    for thread in threads:
        thread.join()
    assert seen <= {None, True}
