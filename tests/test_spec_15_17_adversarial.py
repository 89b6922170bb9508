"""Sections 15-17 under hostile use: deadlines met late, hedges that both answer or both fail,
pools whose deployments all refuse, slots in flight under cancellation and errors, budgets
under threads.

Times are generous multiples (a first item 0.6 s late against a 0.1 s deadline); counts bound
everything else.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    BreakerRegistry,
    BudgetExceededError,
    FallbacksExhaustedError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    ThrottledError,
    circuit_breaker,
    with_fallbacks,
    with_hedging,
    with_pool,
    with_retry,
)
from llm_circuit_breaker.testing import FakeClock

CONTENT = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
LATE = 0.6  # when a late first item comes
DEADLINE = 0.1  # the first_token_timeout it misses


# -- section 15: first_token_timeout on sync streams ----------------------------------------


def test_a_sync_generator_whose_first_content_comes_late_times_out() -> None:
    """A thread cannot be interrupted, but a first content item that comes after the deadline
    has missed it: the attempt fails (a provider fault, counted), nothing is yielded."""
    registry = BreakerRegistry()

    @circuit_breaker("late-gen", registry=registry, first_token_timeout=DEADLINE)
    def stream() -> Iterator[Any]:
        time.sleep(LATE)
        yield CONTENT

    got: list[Any] = []
    with pytest.raises(RequestTimeoutError, match="no content within"):
        got.extend(stream())
    assert got == []
    assert registry.get("late-gen").stats.failures == 1


def test_a_returned_sync_stream_whose_first_content_comes_late_times_out() -> None:
    registry = BreakerRegistry()
    closed: list[bool] = []

    def sdk_stream() -> Iterator[Any]:
        try:
            time.sleep(LATE)
            yield CONTENT
        finally:
            closed.append(True)

    @circuit_breaker("late-returned", registry=registry, first_token_timeout=DEADLINE)
    def call() -> Iterator[Any]:
        return sdk_stream()

    with pytest.raises(RequestTimeoutError):
        list(call())
    assert closed == [True]
    assert registry.get("late-returned").stats.failures == 1


def test_with_retry_tries_a_late_sync_stream_again_and_keeps_the_one_in_time() -> None:
    registry = BreakerRegistry()
    calls: list[int] = []

    @with_retry(max_retries=2, sleep=lambda s: None)
    @circuit_breaker("late-retried", registry=registry, first_token_timeout=DEADLINE)
    def stream() -> Iterator[Any]:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(LATE)
        yield ROLE
        yield CONTENT

    assert list(stream()) == [ROLE, CONTENT]
    assert len(calls) == 2


def test_a_sync_stream_in_time_is_untouched() -> None:
    @circuit_breaker("in-time", registry=BreakerRegistry(), first_token_timeout=5.0)
    def stream() -> Iterator[Any]:
        yield ROLE
        yield CONTENT
        time.sleep(2 * DEADLINE)  # after the first content: no deadline any more
        yield CONTENT

    assert list(stream()) == [ROLE, CONTENT, CONTENT]


# -- section 15: hedging -------------------------------------------------------------------


async def test_hedges_that_both_answer_give_one_result_and_every_slot_back() -> None:
    """Twenty hedged calls whose two attempts both answer: one result each, the loser never
    a failure, no slot in flight left, no task left running."""
    registry = BreakerRegistry()
    release = asyncio.Event()

    @circuit_breaker("both-a", registry=registry, max_concurrent=64)
    async def slow(i: int) -> str:
        await release.wait()
        return f"a{i}"

    @circuit_breaker("both-b", registry=registry, max_concurrent=64)
    async def other(i: int) -> str:
        await release.wait()
        return f"b{i}"

    hedged = with_hedging(slow, other, delay=0.0)
    calls = [asyncio.ensure_future(hedged(i)) for i in range(20)]
    await asyncio.sleep(0.05)
    before = set(asyncio.all_tasks())
    release.set()
    results = await asyncio.gather(*calls)
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(r[1:] for r in results) == sorted(str(i) for i in range(20))
    assert hedged.hedge_stats.attempts == 40
    assert sum(hedged.hedge_stats.wins.values()) == 20
    for name in ("both-a", "both-b"):
        breaker = registry.get(name)
        assert breaker.stats.failures == 0
        assert breaker.concurrency["in_flight"] == 0
        assert breaker.concurrency["waiting"] == 0
    leftover = {t for t in asyncio.all_tasks() & before if not t.done()}
    assert leftover <= {asyncio.current_task()}


async def test_cancelling_a_hedged_stream_mid_way_closes_both_attempts() -> None:
    registry = BreakerRegistry()
    closed: list[str] = []

    def make(name: str, first_after: float) -> Any:
        @circuit_breaker(name, registry=registry, max_concurrent=1)
        async def stream() -> AsyncIterator[Any]:
            try:
                await asyncio.sleep(first_after)
                yield CONTENT
                await asyncio.sleep(30)
                yield CONTENT
            finally:
                closed.append(name)

        return stream

    hedged = with_hedging(make("mid-a", 30.0), make("mid-b", 0.0), delay=0.01)
    got: list[Any] = []

    async def consume() -> None:
        async for item in hedged():
            got.append(item)

    task = asyncio.ensure_future(consume())
    while not got:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(20):
        if len(closed) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(closed) == ["mid-a", "mid-b"]
    for name in ("mid-a", "mid-b"):
        breaker = registry.get(name)
        assert breaker.concurrency["in_flight"] == 0
        assert breaker.stats.failures == 0


def test_sync_hedges_that_all_fail_raise_the_last_error_once_each_target_tried() -> None:
    registry = BreakerRegistry()
    calls: list[str] = []

    def make(name: str) -> Any:
        @circuit_breaker(name, registry=registry, failure_threshold=100)
        def call() -> str:
            calls.append(name)
            raise ServerError(503)

        return call

    hedged = with_hedging(make("sf-a"), make("sf-b"), make("sf-c"), delay=5.0)
    with pytest.raises(ServerError):
        hedged()
    assert sorted(calls) == ["sf-a", "sf-b", "sf-c"]
    assert hedged.hedge_stats.failovers == 2
    assert hedged.hedge_stats.hedges == 0


# -- section 17: pools ---------------------------------------------------------------------


def test_a_pool_whose_deployments_all_429_refuses_without_calling_them_again() -> None:
    registry = BreakerRegistry()
    calls: list[str] = []

    def make(name: str) -> Any:
        @circuit_breaker(name, registry=registry, throttle_max_wait=1.0)
        def call() -> str:
            calls.append(name)
            raise RateLimitError(429, {"retry-after": "100"})

        return call

    pool = with_pool(make("rl-a"), make("rl-b"))
    with pytest.raises(FallbacksExhaustedError):
        pool()
    assert sorted(calls) == ["rl-a", "rl-b"]
    with pytest.raises(ThrottledError) as refused:
        pool()
    assert len(calls) == 2  # nothing sent the second time
    assert 90 < refused.value.retry_after <= 110  # the hint, plus its jitter
    for name in ("rl-a", "rl-b"):
        assert registry.get(name).stats.failures == 0  # throttled, not failed
        assert pool.pool_stats[name].in_flight == 0


@pytest.mark.parametrize("kind", ["plain", "coroutine", "generator", "async_generator"])
async def test_a_pool_call_that_raises_a_base_exception_gives_its_slot_back(kind: str) -> None:
    registry = BreakerRegistry()

    class Interrupt(BaseException):
        pass

    if kind == "plain":

        @circuit_breaker("bx", registry=registry, max_concurrent=1)
        def target() -> Any:
            raise Interrupt

    elif kind == "coroutine":

        @circuit_breaker("bx", registry=registry, max_concurrent=1)
        async def target() -> Any:
            raise Interrupt

    elif kind == "generator":

        @circuit_breaker("bx", registry=registry, max_concurrent=1)
        def target() -> Any:
            raise Interrupt
            yield  # pragma: no cover

    else:

        @circuit_breaker("bx", registry=registry, max_concurrent=1)
        async def target() -> Any:
            raise Interrupt
            yield  # pragma: no cover

    pool = with_pool(target)
    for _ in range(3):
        with pytest.raises(Interrupt):
            if kind == "plain":
                pool()
            elif kind == "coroutine":
                await pool()
            elif kind == "generator":
                list(pool())
            else:
                [item async for item in pool()]
    assert pool.pool_stats["bx"].in_flight == 0
    assert registry.get("bx").concurrency["in_flight"] == 0


# -- section 17: calls in flight ------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.sampled_from(["ok", "fail", "caller", "cancel", "slow"]),
        min_size=1,
        max_size=24,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_slots_always_come_back_whatever_each_call_does(plan: list[str], limit: int) -> None:
    async def main() -> None:
        registry = BreakerRegistry()

        @circuit_breaker("slots", registry=registry, max_concurrent=limit, throttle_max_wait=30)
        async def call(what: str) -> str:
            await asyncio.sleep(0)
            if what == "fail":
                raise ServerError(503)
            if what == "caller":
                raise ValueError("bad input")
            if what in ("cancel", "slow"):
                await asyncio.sleep(30 if what == "cancel" else 0.001)
            return what

        tasks = [asyncio.ensure_future(call(what)) for what in plan]
        await asyncio.sleep(0.01)
        for task, what in zip(tasks, plan, strict=True):
            if what == "cancel":
                task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert len(done) == len(plan)
        view = registry.get("slots").concurrency
        assert view["in_flight"] == 0
        assert view["waiting"] == 0

    asyncio.run(main())


def test_the_adaptive_limit_halves_on_529_and_timeouts_not_on_429() -> None:
    registry = BreakerRegistry()
    errors: list[BaseException] = []

    @circuit_breaker("aimd", registry=registry, max_concurrent="adaptive", failure_threshold=1000)
    def call() -> str:
        raise errors.pop()

    breaker = registry.get("aimd")
    start = breaker.concurrency["limit"]
    assert breaker.concurrency["mode"] == "adaptive"
    errors.append(RateLimitError(429))
    with pytest.raises(RateLimitError):
        call()
    assert breaker.concurrency["limit"] == start
    errors.append(ServerError(529))
    with pytest.raises(ServerError):
        call()
    assert breaker.concurrency["limit"] == max(1, start // 2)
    errors.append(RequestTimeoutError("read timed out"))
    with pytest.raises(RequestTimeoutError):
        call()
    assert breaker.concurrency["limit"] == max(1, start // 4)
    assert breaker.concurrency["in_flight"] == 0


# -- section 16: retry budget under threads --------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    st.integers(min_value=2, max_value=8),
    st.integers(min_value=1, max_value=40),
    st.sampled_from([0.1, 0.2, 0.5]),
    st.sampled_from([0.0, 0.5, 1.0]),
)
def test_threads_never_retry_past_the_budgets_share_plus_reserve(
    threads: int, calls_each: int, ratio: float, floor: float
) -> None:
    """Every call fails; the clock stands still, so all of it falls in one window: retries
    <= ratio x first attempts + floor x 10 s."""
    clock = FakeClock(start=1000.0)
    registry = BreakerRegistry(clock=clock)
    first, total = [0], [0]
    lock = threading.Lock()

    @with_retry(max_retries=3, sleep=lambda s: None)
    @circuit_breaker(
        "budget",
        registry=registry,
        retry_budget=ratio,
        retry_budget_floor=floor,
        failure_threshold=10**6,
    )
    def call() -> str:
        with lock:
            total[0] += 1
        raise ServerError(503)

    def worker() -> None:
        for _ in range(calls_each):
            with lock:
                first[0] += 1
            with pytest.raises(ServerError):
                call()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    retries = total[0] - first[0]
    assert retries <= ratio * first[0] + floor * 10 + 1e-9
    stats = registry.get("budget").stats
    assert stats.retries_denied >= 1 or retries == 3 * first[0]


# -- section 12 x 15: hedging under trio and anyio -------------------------------------------


def _trio_targets(registry: BreakerRegistry, log: list[str]) -> tuple[Any, Any]:
    import trio

    @circuit_breaker("trio-slow", registry=registry, max_concurrent=4)
    async def slow() -> str:
        log.append("slow")
        try:
            await trio.sleep(30)
        finally:
            log.append("slow ended")
        return "slow"

    @circuit_breaker("trio-fast", registry=registry, max_concurrent=4)
    async def fast() -> str:
        log.append("fast")
        await trio.sleep(0)
        return "fast"

    return slow, fast


def test_hedging_runs_under_trio_and_cancels_the_loser_as_ignored() -> None:
    import trio

    registry = BreakerRegistry()
    log: list[str] = []
    slow, fast = _trio_targets(registry, log)
    hedged = with_hedging(slow, fast, delay=0.01)

    assert trio.run(hedged) == "fast"
    assert log == ["slow", "fast", "slow ended"]
    slow_breaker = registry.get("trio-slow")
    assert slow_breaker.stats.ignored == 1
    assert slow_breaker.stats.failures == 0
    assert slow_breaker.concurrency["in_flight"] == 0
    assert hedged.hedge_stats.wins == {"trio-slow": 0, "trio-fast": 1}


def test_hedging_under_trio_raises_plain_errors_not_exception_groups() -> None:
    import trio

    registry = BreakerRegistry()

    @circuit_breaker("trio-down", registry=registry, failure_threshold=100)
    async def down() -> str:
        await trio.sleep(0)
        raise ServerError(503)

    @circuit_breaker("trio-caller", registry=registry)
    async def bad_request() -> str:
        from llm_circuit_breaker import HTTPStatusError

        raise HTTPStatusError(400)

    with pytest.raises(ServerError):
        trio.run(with_hedging(down, down, delay=0.01))
    from llm_circuit_breaker import HTTPStatusError

    log: list[str] = []
    slow, _ = _trio_targets(registry, log)
    with pytest.raises(HTTPStatusError):
        trio.run(with_hedging(bad_request, slow, delay=0.0))
    assert registry.get("trio-slow").concurrency["in_flight"] == 0


def test_a_hedged_stream_under_trio_wins_by_content_and_closes_the_loser() -> None:
    import trio

    registry = BreakerRegistry()
    closed: list[str] = []

    def make(name: str, first_after: float) -> Any:
        @circuit_breaker(name, registry=registry)
        async def stream() -> AsyncIterator[Any]:
            try:
                yield ROLE
                await trio.sleep(first_after)
                yield CONTENT
            finally:
                closed.append(name)

        return stream

    hedged = with_hedging(make("trio-s1", 30.0), make("trio-s2", 0.0), delay=0.01)

    async def main() -> list[Any]:
        return [item async for item in hedged()]

    assert trio.run(main) == [ROLE, CONTENT]
    assert sorted(closed) == ["trio-s1", "trio-s2"]
    assert registry.get("trio-s1").stats.failures == 0


def test_cancelling_a_hedged_call_under_trio_cancels_every_attempt() -> None:
    import trio

    registry = BreakerRegistry()
    log: list[str] = []
    slow, _ = _trio_targets(registry, log)
    hedged = with_hedging(slow, slow, delay=0.0)

    async def main() -> None:
        with trio.move_on_after(0.05):
            await hedged()

    trio.run(main)
    assert log.count("slow ended") == 2
    breaker = registry.get("trio-slow")
    assert breaker.stats.failures == 0
    assert breaker.concurrency["in_flight"] == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hedging_runs_under_anyio_on_either_backend(backend: str) -> None:
    import anyio

    registry = BreakerRegistry()

    @circuit_breaker("anyio-slow", registry=registry)
    async def slow() -> str:
        await anyio.sleep(30)
        return "slow"

    @circuit_breaker("anyio-fast", registry=registry)
    async def fast() -> str:
        return "fast"

    hedged = with_hedging(slow, fast, delay=0.01)
    assert anyio.run(hedged, backend=backend) == "fast"
    assert registry.get("anyio-slow").stats.failures == 0


# -- sections 11 x 17: a returned SDK stream left behind is closed ---------------------------


class _SDKStream:
    """An SDK stream object (no generator): only ``close`` gives its connection back."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.closed = False

    def __iter__(self) -> _SDKStream:
        return self

    def __next__(self) -> Any:
        if self.fail:
            raise ServerError(503)
        return CONTENT

    def close(self) -> None:
        self.closed = True


class _AsyncSDKStream:
    def __init__(self, fail: bool, hang: bool = False) -> None:
        self.fail = fail
        self.hang = hang
        self.closed = False

    def __aiter__(self) -> _AsyncSDKStream:
        return self

    async def __anext__(self) -> Any:
        if self.hang:
            await asyncio.sleep(30)
        if self.fail:
            raise ServerError(503)
        return CONTENT

    async def close(self) -> None:  # as openai's AsyncStream: close, awaited
        self.closed = True


@pytest.mark.parametrize("combine", [with_pool, with_fallbacks])
def test_a_returned_stream_that_fails_before_its_first_item_is_closed(combine: Any) -> None:
    registry = BreakerRegistry()
    made: list[_SDKStream] = []

    @circuit_breaker("ret-down", registry=registry, failure_threshold=100)
    def down() -> Any:
        made.append(_SDKStream(fail=True))
        return made[-1]

    @circuit_breaker("ret-up", registry=registry)
    def up() -> Any:
        return _SDKStream(fail=False)

    stream = combine(down, up)()
    assert next(stream) == CONTENT
    assert [s.closed for s in made] == [True]


@pytest.mark.parametrize("combine", [with_pool, with_fallbacks])
async def test_a_returned_async_stream_left_behind_is_closed(combine: Any) -> None:
    """Failing before its first item, or cancelled while waiting for it: either way the SDK
    stream is closed, not left to the garbage collector with its connection."""
    registry = BreakerRegistry()
    made: list[_AsyncSDKStream] = []

    @circuit_breaker("aret-down", registry=registry, failure_threshold=100)
    async def down() -> Any:
        made.append(_AsyncSDKStream(fail=True))
        return made[-1]

    @circuit_breaker("aret-up", registry=registry)
    async def up() -> Any:
        return _AsyncSDKStream(fail=False)

    @circuit_breaker("aret-hang", registry=registry, max_concurrent=1)
    async def hang() -> Any:
        made.append(_AsyncSDKStream(fail=False, hang=True))
        return made[-1]

    stream = await combine(down, up)()
    assert await stream.__anext__() == CONTENT
    assert [s.closed for s in made] == [True]

    task = asyncio.ensure_future(combine(hang)())
    while len(made) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.closed for s in made] == [True, True]
    assert registry.get("aret-hang").concurrency["in_flight"] == 0


_OUTCOMES = st.tuples(
    st.sampled_from(["answer", "provider", "caller", "stream", "stream-fail"]),
    st.sampled_from([0.0, 0.001, 0.02]),
)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(_OUTCOMES, min_size=1, max_size=4),
    st.integers(min_value=1, max_value=3),
    st.sampled_from(["asyncio", "trio"]),
)
def test_whatever_hedged_attempts_do_one_end_and_every_slot_back(
    outcomes: list[tuple[str, float]], max_attempts: int, backend: str
) -> None:
    """Each target answers, fails (provider's or caller's fault), or streams (content, or a
    failure before it) after a while: the call ends with one answer or one error, no loser
    is counted a failure, every slot comes back and no task is left (asyncio and trio)."""
    import anyio

    from llm_circuit_breaker import HTTPStatusError

    async def main() -> None:
        registry = BreakerRegistry()
        kinds = {what.startswith("stream") for what, _ in outcomes}
        streaming = kinds == {True}
        targets = []
        for i, (what, after) in enumerate(outcomes):
            name = f"t{i}"
            if streaming:

                @circuit_breaker(name, registry=registry, max_concurrent=8)
                async def stream(what: str = what, after: float = after) -> AsyncIterator[Any]:
                    yield ROLE
                    await anyio.sleep(after)
                    if what == "stream-fail":
                        raise ServerError(503)
                    yield CONTENT

                targets.append(stream)
            else:

                @circuit_breaker(name, registry=registry, max_concurrent=8)
                async def call(what: str = what, after: float = after) -> str:
                    await anyio.sleep(after)
                    if what in ("provider", "stream-fail"):
                        raise ServerError(503)
                    if what == "caller":
                        raise HTTPStatusError(400)
                    return "answer"

                targets.append(call)
        hedged = with_hedging(*targets, delay=0.005, max_attempts=max_attempts)
        if streaming:
            try:
                got: Any = [item async for item in hedged()]
            except Exception as exc:
                got = exc
        else:
            try:
                got = await hedged()
            except Exception as exc:
                got = exc
        for _ in range(10):
            await anyio.sleep(0)
        if isinstance(got, Exception):
            assert isinstance(got, (ServerError, HTTPStatusError))
        else:
            assert got in ("answer", [ROLE, CONTENT])
            assert sum(hedged.hedge_stats.wins.values()) == 1
        stats = hedged.hedge_stats
        assert 1 <= stats.attempts <= max(max_attempts, len(targets))
        for i, (what, _) in enumerate(outcomes):
            breaker = registry.get(f"t{i}")
            assert breaker.concurrency["in_flight"] == 0
            if what not in ("provider", "stream-fail"):  # a loser is never a failure
                assert breaker.stats.failures == 0
        if backend == "asyncio":
            current = asyncio.current_task()
            assert all(t.done() for t in asyncio.all_tasks() if t is not current)

    anyio.run(main, backend=backend)


def test_a_sync_hedge_still_in_line_for_a_slot_when_the_race_ends_never_calls() -> None:
    """max_concurrent=1: the hedge waits in line behind the primary's stream; the primary's
    first content wins, and when its stream ends the slot goes to the hedge, which must give
    it back uncalled (a thread cannot be cancelled, but it need not send a request nobody will
    read)."""
    registry = BreakerRegistry()
    calls: list[int] = []

    @circuit_breaker("one-slot", registry=registry, max_concurrent=1, throttle_max_wait=30)
    def ask(i: int) -> Iterator[Any]:
        calls.append(i)
        time.sleep(0.1)
        yield CONTENT

    hedged = with_hedging(ask, ask, delay=0.02)
    assert list(hedged(1)) == [CONTENT]
    breaker = registry.get("one-slot")
    for _ in range(200):  # the loser's thread hands the slot back at once
        if breaker.concurrency["in_flight"] == 0 and breaker.concurrency["waiting"] == 0:
            break
        time.sleep(0.01)
    assert hedged.hedge_stats.hedges == 1
    assert calls == [1]
    assert breaker.stats.calls == 1
    assert breaker.stats.throttle_refusals["concurrency"] == 0
    assert breaker.concurrency["in_flight"] == 0
    assert list(ask(2)) == [CONTENT]  # the slot is free for the next caller


# -- section 16: a spend cap under threads ---------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=300),
)
def test_threads_overspend_a_spend_cap_by_at_most_the_calls_in_flight(
    threads: int, tokens: int, limit: int
) -> None:
    """Once the cap is spent nothing more is sent; what the calls already in flight when it
    ran out spend still counts: at most one call per thread past the limit."""
    registry = BreakerRegistry()
    sent, refused = [0], [0]
    lock = threading.Lock()

    @circuit_breaker("cap", registry=registry, token_budget=limit)
    def call() -> dict[str, Any]:
        with lock:
            sent[0] += 1
        time.sleep(0.001)
        return {
            "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
        }

    def worker() -> None:
        for _ in range(limit // tokens + 3):
            try:
                call()
            except BudgetExceededError as exc:
                assert exc.limit == limit
                assert exc.spent >= limit
                with lock:
                    refused[0] += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    budget = registry.get("cap").budget
    assert budget["spent"] == sent[0] * tokens
    assert budget["spent"] < limit + threads * tokens
    assert refused[0] >= 1
    breaker = registry.get("cap")
    assert breaker.stats.failures == 0
    assert breaker.state.name == "CLOSED"


class _TrioSDKStream:
    """An SDK async stream whose close awaits (a checkpoint, as a real response's has)."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang
        self.closed = False

    def __aiter__(self) -> _TrioSDKStream:
        return self

    async def __anext__(self) -> Any:
        import trio

        if self.hang:
            await trio.sleep(30)
        return CONTENT

    async def close(self) -> None:
        import trio

        await trio.sleep(0)
        self.closed = True


@pytest.mark.parametrize("combine", ["hedging", "pool", "fallbacks"])
def test_a_stream_left_behind_by_a_cancelled_trio_task_is_closed(combine: str) -> None:
    """Under trio a cancelled task's awaits are cancelled too: closing the SDK stream it
    leaves behind must be shielded, or its connection stays open."""
    import trio

    registry = BreakerRegistry()
    made: list[_TrioSDKStream] = []

    @circuit_breaker("trio-hang", registry=registry)
    async def hang() -> Any:
        made.append(_TrioSDKStream(hang=True))
        return made[-1]

    @circuit_breaker("trio-answer", registry=registry)
    async def answer() -> Any:
        made.append(_TrioSDKStream(hang=False))
        return made[-1]

    async def main() -> None:
        if combine == "hedging":
            stream = await with_hedging(hang, answer, delay=0.01)()
            assert await stream.__anext__() == CONTENT
            return
        wrapped = with_pool(hang) if combine == "pool" else with_fallbacks(hang)
        with trio.move_on_after(0.05):
            await wrapped()

    trio.run(main)
    assert made[0].closed  # the attempt left behind
    assert registry.get("trio-hang").stats.failures == 0
