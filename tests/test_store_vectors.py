"""The same transition vectors against every store: the Lua and the Python provably agree."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    Outcome,
)
from llm_circuit_breaker.storage import MemoryStateStore, RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests.redis_server import RedisServer
from tests.vectors import VECTORS, Step, run_vector

StoreFactory = Callable[[FakeClock], Any]


@pytest.fixture(params=["memory", "redis"])
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Stores that take their time from a fake clock."""
    if request.param == "memory":
        yield lambda clock: MemoryStateStore(clock=clock)
        return
    client = request.getfixturevalue("redis_client")
    yield lambda clock: RedisStateStore(client, prefix="vectors", clock=clock)


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_on_every_store(name: str, store_factory: StoreFactory, clock: FakeClock) -> None:
    """Each vector leaves the same states behind in memory and in Redis."""
    fields, steps = VECTORS[name]
    breaker = CircuitBreaker("v", CircuitBreakerConfig(**fields), store=store_factory(clock))
    run_vector(breaker, clock, steps)


async def _arun_vector(breaker: CircuitBreaker, clock: FakeClock, steps: list[Step]) -> None:
    for number, (op, state, failures, successes) in enumerate(steps, 1):
        if op.startswith("+"):
            clock.advance(float(op[1:]))
        else:
            permit = await breaker.atry_admit()
            if op == "R":
                assert permit < 0, f"step {number}: admitted, expected a refusal"
            else:
                outcome = {"S": Outcome.SUCCESS, "F": Outcome.FAILURE, "I": Outcome.IGNORED}[op]
                assert permit >= 0, f"step {number}: refused"
                if outcome is Outcome.SUCCESS:
                    await breaker.arecord_success(permit)
                else:
                    await breaker.arecord(permit, outcome)
        view = await breaker.asnapshot()
        seen = (view["state"], view["failure_count"], view["success_count"])
        assert seen == (state, failures, successes), f"step {number} ({op}): {seen}"


@pytest.fixture
async def async_redis(
    redis_server: RedisServer, redis_client: redis.Redis
) -> AsyncIterator[redis.asyncio.Redis]:
    client = RedisStateStore.from_url(redis_server.url, asyncio=True, timeout=2).client
    yield client
    await client.aclose()


@pytest.mark.parametrize("name", list(VECTORS))
async def test_vector_on_asyncio_redis(
    name: str, async_redis: redis.asyncio.Redis, clock: FakeClock
) -> None:
    """The asyncio client path takes the same transitions."""
    fields, steps = VECTORS[name]
    store = RedisStateStore(async_redis, prefix="avectors", clock=clock)
    await _arun_vector(
        CircuitBreaker("v", CircuitBreakerConfig(**fields), store=store), clock, steps
    )


def test_two_breakers_one_circuit(redis_client: redis.Redis, clock: FakeClock) -> None:
    """Two breaker objects (two processes, in effect) on one store share one circuit."""
    config = CircuitBreakerConfig(failure_threshold=2)
    first = CircuitBreaker("shared", config, store=RedisStateStore(redis_client, clock=clock))
    second = CircuitBreaker("shared", config, store=RedisStateStore(redis_client, clock=clock))
    for _ in range(2):
        first.record(first.admit(), Outcome.FAILURE)
    with pytest.raises(CircuitOpenError) as caught:
        second.admit()
    assert caught.value.retry_after == pytest.approx(30.0)
    assert second.state is CircuitState.OPEN


def test_failure_rate_and_slow_calls_in_redis(redis_client: redis.Redis, clock: FakeClock) -> None:
    """The failure-rate window and slow-call tracking work in the Lua too."""
    store = RedisStateStore(redis_client, clock=clock)
    rate = CircuitBreaker(
        "rate",
        CircuitBreakerConfig(
            failure_threshold=100, failure_rate_threshold=0.5, window=10.0, minimum_calls=4
        ),
        store=store,
    )
    for outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE):
        rate.record(rate.admit(), outcome)
    assert rate.state is CircuitState.OPEN
    slow = CircuitBreaker(
        "slow", CircuitBreakerConfig(failure_threshold=1, slow_call_duration=1.0), store=store
    )
    permit = slow.admit()
    clock.advance(2.0)
    slow.record_success(permit)
    assert slow.state is CircuitState.OPEN


def test_server_directed_open_and_force(redis_client: redis.Redis, clock: FakeClock) -> None:
    """open_for, force_open (held) and reset go through the script."""
    breaker = CircuitBreaker(
        "ctl", CircuitBreakerConfig(), store=RedisStateStore(redis_client, clock=clock)
    )
    breaker.record(
        breaker.admit(), Outcome.FAILURE, open_for=120.0, why="server asked to wait 120s"
    )
    assert breaker.retry_after == pytest.approx(120.0)
    breaker.force_open()
    clock.advance(10_000)
    assert breaker.state is CircuitState.OPEN
    assert breaker.snapshot()["retry_after"] is None
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
