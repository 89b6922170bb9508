"""Pools of equivalent deployments: one target per call, chosen by what the breakers know."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitOpenError,
    FallbacksExhaustedError,
    LLMCircuitBreaker,
    Outcome,
    PoolStats,
    ThrottledError,
    circuit_breaker,
    with_fallbacks,
    with_pool,
    with_retry,
)
from llm_circuit_breaker.errors import HTTPStatusError, http_status_error
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def answering(name: str, log: list[str]) -> Any:
    """A plain target that records its name and answers with it."""

    def target(prompt: str) -> str:
        log.append(name)
        return f"{name}: {prompt}"

    target.__qualname__ = name
    return target


def failing(name: str, log: list[str], status: int = 503) -> Any:
    def target(prompt: str) -> str:
        log.append(name)
        raise http_status_error(status, None, {"error": {"type": "server_error"}})

    target.__qualname__ = name
    return target


# -- strategies -----------------------------------------------------------------------------


def test_round_robin_takes_each_target_in_turn() -> None:
    """Each call goes to one target, the next one each time."""
    log: list[str] = []
    pool = with_pool(*(answering(n, log) for n in "abc"), strategy="round_robin")
    assert [pool("hi") for _ in range(6)] == [f"{n}: hi" for n in "abcabc"]
    assert log == list("abcabc")
    stats = pool.pool_stats  # type: ignore[attr-defined]
    assert list(stats) == list("abc")
    assert all(
        isinstance(s, PoolStats) and (s.served, s.in_flight) == (2, 0) for s in stats.values()
    )


def test_weighted_follows_the_weights_exactly() -> None:
    """Smooth weighted round robin: weights 1, 3 give 1 in 4 calls to the first, spread out,
    the same way every time."""
    log: list[str] = []
    pool = with_pool(answering("a", log), answering("b", log), strategy="weighted", weights=(1, 3))
    for _ in range(8):
        pool("hi")
    assert log == ["b", "a", "b", "b"] * 2


async def test_least_busy_avoids_targets_with_calls_in_flight() -> None:
    """Two calls hang on a and b; the third goes to c; a stream holds its target until it
    ends."""
    release = asyncio.Event()
    log: list[str] = []

    def slow(name: str) -> Any:
        async def target() -> str:
            log.append(name)
            await release.wait()
            return name

        target.__qualname__ = name
        return target

    pool = with_pool(slow("a"), slow("b"), slow("c"), strategy="least_busy")
    first = asyncio.ensure_future(pool())
    second = asyncio.ensure_future(pool())
    while len(log) < 2:
        await asyncio.sleep(0)
    stats = pool.pool_stats  # type: ignore[attr-defined]
    assert [stats[n].in_flight for n in "abc"] == [1, 1, 0]
    third = asyncio.ensure_future(pool())
    while len(log) < 3:
        await asyncio.sleep(0)
    assert log == ["a", "b", "c"]
    release.set()
    assert await asyncio.gather(first, second, third) == ["a", "b", "c"]
    assert [stats[n].in_flight for n in "abc"] == [0, 0, 0]


def test_latency_prefers_the_fastest_recent_target() -> None:
    """Each target is measured once (unmeasured ones first), then the fastest gets the calls;
    when it slows down, the other takes over."""
    now = [0.0]
    took = {"a": 5.0, "b": 1.0}
    log: list[str] = []

    def timed(name: str) -> Any:
        def target() -> str:
            log.append(name)
            now[0] += took[name]
            return name

        target.__qualname__ = name
        return target

    pool = with_pool(timed("a"), timed("b"), strategy="latency", clock=lambda: now[0])
    for _ in range(5):
        pool()
    assert log == ["a", "b", "b", "b", "b"]
    stats = pool.pool_stats  # type: ignore[attr-defined]
    assert (stats["a"].latency, stats["b"].latency) == (5.0, 1.0)
    took["b"] = 20.0
    for _ in range(3):
        pool()
    assert log[5:] == ["b", "a", "a"]


# -- failover -------------------------------------------------------------------------------


def test_an_open_circuit_is_passed_over_without_a_call(clock: FakeClock) -> None:
    """A target whose circuit is OPEN gets no call and counts as skipped."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    east = circuit_breaker("east", registry=registry)(answering("east", log))
    west = circuit_breaker("west", registry=registry)(answering("west", log))
    pool = with_pool(east, west, strategy="round_robin")
    registry.get("east").force_open()
    assert [pool("hi") for _ in range(4)] == ["west: hi"] * 4
    assert log == ["west"] * 4
    stats = pool.pool_stats  # type: ignore[attr-defined]
    assert (stats["east"].skipped, stats["west"].served) == (4, 4)


def test_a_provider_fault_moves_on_and_a_callers_fault_is_raised(clock: FakeClock) -> None:
    """A 503 moves the call to the next target; a 400 is raised at once; the 503s open the
    circuit, which is then passed over."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    down = circuit_breaker("down", registry=registry, failure_threshold=2)(failing("down", log))
    up = circuit_breaker("up", registry=registry)(answering("up", log))
    pool = with_pool(down, up, strategy="round_robin")
    assert [pool("hi") for _ in range(4)] == ["up: hi"] * 4
    assert log == ["down", "up", "up", "down", "up", "up"]  # open after two 503s
    stats = pool.pool_stats  # type: ignore[attr-defined]
    assert (stats["down"].failed, stats["down"].skipped, stats["up"].served) == (2, 1, 4)

    bad = with_pool(failing("bad", log, 400), answering("fine", log))
    with pytest.raises(HTTPStatusError) as raised:
        bad("hi")
    assert raised.value.status_code == 400


def test_when_no_target_answers(clock: FakeClock) -> None:
    """Every target failing: FallbacksExhaustedError with each error; every target open: the
    refusal that ends soonest, without a call."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    a = circuit_breaker("a", registry=registry, reset_timeout=30)(failing("a", log))
    b = circuit_breaker("b", registry=registry, reset_timeout=10, failure_threshold=1)(
        failing("b", log, 500)
    )
    pool = with_pool(a, b, strategy="round_robin")
    with pytest.raises(FallbacksExhaustedError) as exhausted:
        pool("hi")
    assert [e.status_code for e in exhausted.value.errors] == [503, 500]  # type: ignore[attr-defined]
    registry.get("a").force_open()
    log.clear()
    with pytest.raises(CircuitOpenError) as refused:
        pool("hi")
    assert refused.value.name == "b"  # open for 10 s, not held open
    assert log == []


def test_a_throttle_paused_beyond_its_wait_is_passed_over(clock: FakeClock) -> None:
    """A rate limit with a 60 s hint pauses a's throttle past its 5 s wait: calls go to b
    without touching a; with every throttle paused, ThrottledError (with_retry waits for it)."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    a = circuit_breaker("a", registry=registry, throttle_max_wait=5)(answering("a", log))
    b = circuit_breaker("b", registry=registry, throttle_max_wait=5)(answering("b", log))
    pool = with_pool(a, b)

    def rate_limited(name: str) -> None:
        breaker = registry.get(name)
        breaker.record(breaker.admit(), Outcome.THROTTLED, hint=60.0)

    rate_limited("a")
    assert [pool("hi") for _ in range(3)] == ["b: hi"] * 3
    rate_limited("b")
    with pytest.raises(ThrottledError) as refused:
        pool("hi")
    assert refused.value.retry_after >= 60.0
    assert log == ["b"] * 3
    assert pool.pool_stats["a"].skipped == 4  # type: ignore[attr-defined]


def test_streams_fail_over_before_their_first_item_and_hold_their_target() -> None:
    """A generator that fails before its first item moves on; one that answered stays in
    flight until it ends."""
    log: list[str] = []

    def broken() -> Iterator[str]:
        log.append("broken")
        raise http_status_error(529, None, {"error": {"type": "overloaded_error"}})
        yield "never"

    def fine() -> Iterator[str]:
        log.append("fine")
        yield "one"
        yield "two"

    broken.__qualname__, fine.__qualname__ = "broken", "fine"
    pool = with_pool(broken, fine, strategy="round_robin")
    stream = pool()
    assert next(stream) == "one"
    assert pool.pool_stats["fine"].in_flight == 1  # type: ignore[attr-defined]
    assert list(stream) == ["two"]
    assert pool.pool_stats["fine"].in_flight == 0  # type: ignore[attr-defined]
    assert log == ["broken", "fine"]


async def test_async_generators_and_returned_streams() -> None:
    """Async generators fail over like generators; a coroutine that returns a stream fails
    over until its first item."""

    async def broken() -> AsyncIterator[str]:
        raise http_status_error(503)
        yield "never"

    async def fine() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    pool = with_pool(broken, fine, strategy="round_robin")
    assert [item async for item in pool()] == ["a", "b"]

    async def returns_broken_stream() -> Any:
        return broken()

    async def returns_stream() -> Any:
        return fine()

    returning = with_pool(returns_broken_stream, returns_stream, strategy="round_robin")
    assert [item async for item in await returning()] == ["a", "b"]


# -- scoped names and composition -----------------------------------------------------------


def test_scoped_targets_are_judged_per_filled_name(clock: FakeClock) -> None:
    """With ``east:{model}`` and ``west:{model}``, an open ``east:gpt-4o`` sends gpt-4o calls
    to west while other models still use east."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []

    def deployment(name: str) -> Any:
        @circuit_breaker(f"{name}:{{model}}", registry=registry)
        def complete(prompt: str, model: str) -> str:
            log.append(f"{name}:{model}")
            return name

        return complete

    pool = with_pool(deployment("east"), deployment("west"))
    pool("hi", model="gpt-4o")
    pool("hi", model="gpt-4o-mini")
    registry.get("east:gpt-4o").force_open()
    log.clear()
    assert {pool("hi", model="gpt-4o") for _ in range(3)} == {"west"}
    assert "east" in {pool("hi", model="gpt-4o-mini") for _ in range(3)}
    assert "east:gpt-4o" not in log
    assert set(pool.pool_stats) == {"east:{model}", "west:{model}"}  # type: ignore[attr-defined]


def test_a_pool_is_a_fallbacks_target(clock: FakeClock) -> None:
    """with_fallbacks(pool, backup): the backup answers when the whole pool is open or
    failing; the pool is named after its targets."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    a = circuit_breaker("a", registry=registry)(failing("a", log))
    b = circuit_breaker("b", registry=registry)(failing("b", log))
    backup = answering("backup", log)
    chain = with_fallbacks(with_pool(a, b), backup)
    assert chain("hi") == "backup: hi"
    registry.get("a").force_open()
    registry.get("b").force_open()
    assert chain("hi") == "backup: hi"
    stats = chain.fallback_stats  # type: ignore[attr-defined]
    assert stats["with_pool(a, b)"].failed == 1
    assert stats["with_pool(a, b)"].refused == 1
    assert stats["backup"].served == 2


def test_with_retry_over_a_pool_retries_when_every_target_failed() -> None:
    """The exhausted pool's 503s are worth a retry: the second round answers."""
    answers = iter([503, 503, 200])
    log: list[str] = []

    def flaky(name: str) -> Any:
        def target() -> str:
            log.append(name)
            status = next(answers)
            if status != 200:
                raise http_status_error(status)
            return name

        target.__qualname__ = name
        return target

    retried = with_retry(max_retries=1, sleep=lambda s: None)(
        with_pool(flaky("a"), flaky("b"), strategy="round_robin")
    )
    assert retried() == "b"
    assert log == ["a", "b", "b"]


def test_failover_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Each move to another target is logged with the target's name and the next one."""
    log: list[str] = []
    pool = with_pool(failing("a", log), answering("b", log), strategy="round_robin")
    with caplog.at_level(logging.INFO, logger="llm_circuit_breaker"):
        pool("hi")
    assert "pool: 'a' failed (ServerError); trying 'b'" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"strategy": "fastest"}, ValueError),
        ({"strategy": "round_robin", "weights": (1, 2)}, ValueError),
        ({"strategy": "weighted", "weights": (1,)}, ValueError),
        ({"strategy": "weighted", "weights": (1, 0)}, ValueError),
        ({"strategy": "weighted", "weights": (1, True)}, ValueError),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """Unknown strategies and weights that do not fit are refused when the pool is made."""
    with pytest.raises(error):
        with_pool(answering("a", []), answering("b", []), **kwargs)


def test_targets_must_be_callables_of_one_kind() -> None:
    """No targets, a non-callable, or a sync and an async target together: TypeError."""

    async def coroutine() -> None: ...

    with pytest.raises(TypeError):
        with_pool()
    with pytest.raises(TypeError):
        with_pool(answering("a", []), "b")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one kind"):
        with_pool(answering("a", []), coroutine)


# -- against real deployments ---------------------------------------------------------------


def test_headroom_spends_each_deployments_quota_without_429s() -> None:
    """Three fake deployments with 3, 6 and 12 requests a minute (x-ratelimit-* headers),
    called through LLMCircuitBreaker helpers that never wait: each is tried once, then the
    one with the most requests left gets the call; the pool uses (nearly) the three quotas
    with no 429, then says ThrottledError."""
    servers = [FakeLLMServer().start() for _ in range(3)]
    helpers = []
    try:
        for server, per_minute in zip(servers, (3, 6, 12), strict=True):
            server.rate_limit(per_minute)
            helpers.append(
                LLMCircuitBreaker(
                    name=f"deployment-{per_minute}",
                    circuit_breaker={"throttle_max_wait": 0.0},
                    retry={"max_retries": 0, "respect_retry_after": False},
                    registry=BreakerRegistry(),
                )
            )
        targets = [
            functools.partial(h.call, s.url + "/v1/chat/completions")
            for h, s in zip(helpers, servers, strict=True)
        ]
        pool = with_pool(*targets)
        answered = 0
        with pytest.raises(ThrottledError):
            for _ in range(30):
                pool(data=BODY)
                answered += 1
        stats = pool.pool_stats  # type: ignore[attr-defined]
        served = [stats[f"deployment-{n}"].served for n in (3, 6, 12)]
        assert [s.hits for s in servers] == served  # every request answered: no 429
        assert served[0] <= 3 and served[1] <= 6 and served[2] <= 12
        assert answered == sum(served) >= 18
        assert served[2] > served[1] > served[0]
    finally:
        for helper in helpers:
            helper.close()
        for server in servers:
            server.stop()


async def test_an_outage_fails_over_over_http_then_is_passed_over() -> None:
    """Two fake deployments behind async helpers: while one answers 503, its calls move to the
    other; once its circuit opens it gets no request at all."""
    async with FakeLLMServer() as down, FakeLLMServer() as up:
        down.outage(503)
        registry = BreakerRegistry()
        helpers = [
            LLMCircuitBreaker(
                name=name,
                circuit_breaker={"failure_threshold": 2},
                retry={"max_retries": 0},
                registry=registry,
            )
            for name in ("down", "up")
        ]
        pool = with_pool(
            *(
                functools.partial(h.acall, s.url + "/v1/chat/completions")
                for h, s in zip(helpers, (down, up), strict=True)
            ),
            strategy="round_robin",
        )
        try:
            for _ in range(6):
                answer = await pool(data=BODY)
                assert answer["choices"][0]["message"]["content"] == "Hello!"
        finally:
            for helper in helpers:
                await helper.aclose()
        assert (down.hits, up.hits) == (2, 6)
        stats = pool.pool_stats  # type: ignore[attr-defined]
        assert (stats["down"].failed, stats["down"].skipped, stats["up"].served) == (2, 3, 6)


def test_threads_share_a_pool() -> None:
    """Eight threads calling one pool: every call is served once and nothing stays in flight."""
    import threading

    log: list[str] = []
    pool = with_pool(*(answering(n, log) for n in "abc"), strategy="least_busy")

    def work() -> None:
        for _ in range(200):
            pool("hi")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = pool.pool_stats  # type: ignore[attr-defined]
    assert sum(s.served for s in stats.values()) == len(log) == 1600
    assert all(s.in_flight == 0 for s in stats.values())


def _limits(requests: int, tokens: int | None = None) -> dict[str, str]:
    """OpenAI-style rate-limit headers: ``requests`` (and ``tokens``) left of 100 (10,000)."""
    headers = {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": str(requests),
        "x-ratelimit-reset-requests": "60s",
    }
    if tokens is not None:
        headers |= {
            "x-ratelimit-limit-tokens": "10000",
            "x-ratelimit-remaining-tokens": str(tokens),
            "x-ratelimit-reset-tokens": "60s",
        }
    return headers


def test_headroom_reads_requests_and_tokens_left(clock: FakeClock) -> None:
    """The deployment with the most requests left gets the call, unless its tokens are spent;
    one not heard from counts as full."""
    registry = BreakerRegistry(clock=clock)
    log: list[str] = []
    names = ("a", "b", "c")
    targets = [circuit_breaker(n, registry=registry)(answering(n, log)) for n in names]
    pool = with_pool(*targets)
    registry.get("a").observe(_limits(80, 9000))
    registry.get("b").observe(_limits(20, 9000))
    assert pool("hi") == "c: hi"  # not heard from: full
    registry.get("c").observe(_limits(50, 9000))
    assert pool("hi") == "a: hi"
    registry.get("a").observe(_limits(79, 0))  # requests left, tokens spent
    assert pool("hi") == "c: hi"
    registry.get("c").observe(_limits(0, 9000))
    assert pool("hi") == "b: hi"
