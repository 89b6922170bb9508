"""The throttle kept in a store: one allowance for every process, one 429 pauses them all."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
    ThrottledError,
    ThrottleEvent,
    ThrottleSignal,
    circuit_breaker,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.storage import MemoryStateStore, RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests import redis_workers
from tests.polling import auntil
from tests.redis_server import RedisServer

Fleet = Callable[..., list[CircuitBreaker]]


@pytest.fixture(params=["memory", "redis"])
def fleet(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Fleet]:
    """Breakers of one name as separate processes would hold them: each its own object (and,
    for Redis, its own client), one store clock."""
    clients: list[redis.Redis] = []
    memory = MemoryStateStore(clock=clock)

    def make(count: int = 2, **fields: Any) -> list[CircuitBreaker]:
        config = CircuitBreakerConfig(**fields)
        breakers = []
        for _ in range(count):
            if request.param == "memory":
                store: Any = memory
            else:
                server: RedisServer = request.getfixturevalue("redis_server")
                client = server.client()
                clients.append(client)
                store = RedisStateStore(client, clock=clock)
            breakers.append(CircuitBreaker("shared", config, clock=clock, store=store))
        return breakers

    if request.param == "redis":
        request.getfixturevalue("redis_client")  # a flushed database
    yield make
    for client in clients:
        client.close()


def test_processes_share_one_allowance(fleet: Fleet, clock: FakeClock) -> None:
    """requests_per_minute=6 across two holders: six at once in total, then one per 10 s."""
    a, b = fleet(requests_per_minute=6, throttle_max_wait=60.0)
    for breaker in (a, b, a, b, a, b):
        breaker.record_success(breaker.admit())
    assert clock.sleeps == []
    b.record_success(b.admit())
    a.record_success(a.admit())
    assert clock.sleeps == pytest.approx([10.0, 10.0])
    assert a.throttle["requests_remaining"] == 0


def test_one_rate_limit_pauses_every_holder(fleet: Fleet, clock: FakeClock) -> None:
    """A 429 seen by one holder pauses the other; both hear THROTTLED / UNTHROTTLED once."""
    a, b = fleet()
    heard: list[Any] = []
    a.add_listener(heard.append)
    a.record(a.admit(), Outcome.THROTTLED, hint=3.0)
    assert a.state is CircuitState.CLOSED
    assert 3.0 <= b.throttle["paused_for"] <= 3.3  # type: ignore[operator]
    b.record_success(b.admit())
    (slept,) = clock.sleeps
    assert 3.0 <= slept <= 3.3
    a.record_success(a.admit())
    events = [e for e in heard if isinstance(e, ThrottleEvent)]
    assert [e.new for e in events] == [ThrottleSignal.THROTTLED]  # b's success ended it
    assert b.throttle["paused_for"] == 0.0


def test_a_slot_too_far_is_refused_and_nothing_is_kept(fleet: Fleet, clock: FakeClock) -> None:
    """Beyond throttle_max_wait: ThrottledError at once; the refused call took no slot."""
    a, b = fleet(requests_per_minute=1, throttle_max_wait=5.0)
    a.record_success(a.admit())
    with pytest.raises(ThrottledError) as refused:
        b.admit()
    assert 55.0 <= refused.value.retry_after <= 60.0  # type: ignore[operator]
    clock.advance(60.0)
    b.record_success(b.admit())
    assert clock.sleeps == []


def test_headers_seen_by_one_pace_the_other(fleet: Fleet, clock: FakeClock) -> None:
    """remaining 0 of 60, full again in 60 s, observed by one holder: the other waits 1 s."""
    a, b = fleet(throttle_max_wait=60.0)
    a.observe(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "60s",
        }
    )
    b.record_success(b.admit())
    (slept,) = clock.sleeps
    assert 0.9 <= slept <= 1.1


def test_a_rate_limit_pauses_at_most_throttle_max_pause(fleet: Fleet, clock: FakeClock) -> None:
    """A 429 hinting 300 days pauses every holder for throttle_max_pause (300 s) at most."""
    a, b = fleet(throttle_max_wait=1000.0)
    assert a.config.throttle_max_pause == 300.0
    a.record(a.admit(), Outcome.THROTTLED, hint=300 * 86400.0)
    assert 0.0 < b.throttle["paused_for"] <= 300.0  # type: ignore[operator]
    b.record_success(b.admit())
    (slept,) = clock.sleeps
    assert slept <= 300.0


@pytest.mark.parametrize("cap", [5.0, 300.0])
def test_headers_saying_nothing_is_left_for_a_day_pause_at_most_the_cap(
    fleet: Fleet, clock: FakeClock, cap: float
) -> None:
    """A response saying "1 request per day, 0 remaining": no holder waits longer than
    throttle_max_pause for a slot, the first call after it nor the one after that."""
    a, b = fleet(throttle_max_wait=1000.0, throttle_max_pause=cap)
    a.observe(
        {
            "x-ratelimit-limit-requests": "1",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "24h0m0s",
        }
    )
    for breaker in (b, a):
        breaker.record_success(breaker.admit())
        clock.advance(cap)
    assert clock.sleeps and max(clock.sleeps) <= cap


def test_a_given_up_slot_goes_back(fleet: Fleet, clock: FakeClock) -> None:
    """try_admit gives its slot back: the next caller gets that slot, not the one after."""
    a, b = fleet(requests_per_minute=1, throttle_max_wait=120.0)
    a.record_success(a.admit())
    assert b.try_admit() == -1
    a.record_success(a.admit())
    assert clock.sleeps == pytest.approx([60.0])


async def test_an_asyncio_store_shares_the_throttle(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Through redis.asyncio: a waiting task that is cancelled gives its slot back."""
    client = redis.asyncio.Redis(port=redis_server.port)
    config = CircuitBreakerConfig(requests_per_minute=1, throttle_max_wait=120.0)
    store = RedisStateStore(client, clock=clock)
    breaker = CircuitBreaker("async-shared", config, store=store)
    await breaker.arecord_success(await breaker.aadmit())
    waiting = asyncio.create_task(breaker.aadmit())
    await auntil(lambda: breaker.throttle["waiting"] == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert breaker.throttle["waiting"] == 0
    clock.advance(60.0)
    assert await breaker.atry_admit() >= 0  # the cancelled task's slot was given back
    await client.aclose()


def test_redis_down_throttles_locally(closed_port: int, clock: FakeClock) -> None:
    """An unreachable Redis: the local throttle paces (and nothing fails)."""
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{closed_port}")
    config = CircuitBreakerConfig(requests_per_minute=2, throttle_max_wait=60.0)
    breaker = CircuitBreaker("down", config, clock=clock, store=store)
    for _ in range(3):
        breaker.record_success(breaker.admit())
    assert clock.sleeps == [30.0]


def test_four_processes_stay_within_one_allowance(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Real processes, one frozen server clock: 4 x 10 admissions at 20 per minute get the
    burst of 20 at once and the other 20 the slots 3, 6, ... 60 s away, each exactly once."""
    redis_client.set(redis_workers.CLOCK_KEY, "1000")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        waits = pool.map(redis_workers.paced, [redis_server.port] * 4)
    flat = sorted(w for each in waits for w in each)
    assert flat == pytest.approx([0.0] * 20 + [3.0 * k for k in range(1, 21)])


def test_scoped_breakers_are_shared_per_scope_through_redis(
    redis_server: RedisServer, redis_client: redis.Redis, clock: FakeClock
) -> None:
    """Two processes' registries (each its own client): gpt-4o tripped in one is OPEN in the
    other; gpt-4o-mini stays CLOSED in both; each scope is its own Redis key."""
    registries = [
        BreakerRegistry(store=RedisStateStore(redis_server.client(), clock=clock), clock=clock)
        for _ in range(2)
    ]
    calls = []
    for registry in registries:

        @circuit_breaker("openai:{model}", registry=registry, failure_threshold=1)
        def complete(model: str) -> str:
            if model == "gpt-4o":
                raise http_status_error(529)
            return model

        calls.append(complete)
    with pytest.raises(Exception, match="529"):
        calls[0]("gpt-4o")
    clock.advance(0.1)  # past the other process's near-cache
    with pytest.raises(CircuitOpenError):
        calls[1]("gpt-4o")
    assert calls[1]("gpt-4o-mini") == "gpt-4o-mini"
    keys = {k.decode() for k in redis_client.keys("llm-circuit-breaker:{*}")}
    assert keys == {
        "llm-circuit-breaker:{openai:gpt-4o}",
        "llm-circuit-breaker:{openai:gpt-4o-mini}",
    }
