"""A guarded stream collected without being closed reports what it held (neither outcome):
no in-flight entry, probe slot or Redis in-flight permit outlives it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import redis

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.httpx import CircuitBreakerTransport
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply
from tests.redis_server import RedisServer

HALF_OPEN_SOON = CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0, success_threshold=1)


def _half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.record(breaker.admit(), _failure())
    clock.advance(10.0)
    assert breaker.state is CircuitState.HALF_OPEN


def _failure() -> Any:
    from llm_circuit_breaker import Outcome

    return Outcome.FAILURE


def test_a_dropped_returned_stream_frees_the_probe_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("dropped", HALF_OPEN_SOON, clock=clock)

    @circuit_breaker(breaker=breaker)
    def stream() -> Iterator[int]:
        return iter([1, 2, 3])

    _half_open(breaker, clock)
    held = stream()
    next(held)
    try:
        stream()
        raise AssertionError("the probe slot should be taken while the stream lives")
    except CircuitOpenError:
        pass
    del held
    gc.collect()
    assert breaker.stats.ignored == 1
    assert list(stream()) == [1, 2, 3]  # the next probe is admitted, and closes the circuit
    assert breaker.state is CircuitState.CLOSED


def test_thousands_of_dropped_streams_leave_no_in_flight_entry() -> None:
    """With slow_call_duration every call's permit is tracked until it reports."""
    breaker = CircuitBreaker("slow-tracked", CircuitBreakerConfig(slow_call_duration=60.0))

    @circuit_breaker(breaker=breaker)
    def stream() -> Iterator[int]:
        return iter([1, 2, 3])

    for _ in range(2_000):
        next(stream())  # read one item, then dropped
    gc.collect()
    assert not breaker._local.core._inflight
    assert breaker.stats.ignored == 2_000


async def test_a_dropped_stream_on_an_asyncio_store_gives_its_redis_permit_back(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, asyncio=True, clock=clock, timeout=2)
    breaker = CircuitBreaker("adropped", HALF_OPEN_SOON, clock=clock, store=store)

    async def items() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    @circuit_breaker(breaker=breaker)
    async def stream() -> AsyncIterator[int]:
        return items()

    with_trip = circuit_breaker(breaker=breaker)

    @with_trip
    async def fail() -> None:
        raise http_status_error(503)

    try:
        await fail()
    except Exception:
        pass
    clock.advance(10.0)
    held = await stream()
    await held.__anext__()
    inflight = store.keys("adropped")[1]
    assert redis_client.zcard(inflight) == 1
    del held
    gc.collect()
    for _ in range(50):  # the report was scheduled on this loop
        if redis_client.zcard(inflight) == 0:
            break
        await asyncio.sleep(0.02)
    assert redis_client.zcard(inflight) == 0
    assert [i async for i in await stream()] == [0, 1, 2]
    await store.client.aclose()


def test_a_dropped_transport_response_frees_its_probe(llm_server: FakeLLMServer) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("sdk", HALF_OPEN_SOON, clock=clock)
    transport = CircuitBreakerTransport(breaker)
    _half_open(breaker, clock)
    llm_server.script(Reply.openai_stream(["a", "b", "c"]), Reply.ok())
    with httpx.Client(transport=transport, base_url=llm_server.url) as client:
        request = client.build_request(
            "POST", "/v1/chat/completions", json={"model": "m", "stream": True}
        )
        response = client.send(request, stream=True)
        next(response.iter_raw())
        del response
        gc.collect()
        assert breaker.stats.ignored == 1
        assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 200
    assert breaker.state is CircuitState.CLOSED


def test_an_attempt_that_ends_before_its_body_frees_its_probe(
    monkeypatch: Any, llm_server: FakeLLMServer
) -> None:
    """Admitted, then an error between the answer's headers and its body (here the throttle's
    reading of the rate-limit headers): the attempt is dropped unreported and gives its probe
    slot back, as neither outcome."""
    clock = FakeClock()
    breaker = CircuitBreaker("early", HALF_OPEN_SOON, clock=clock)
    transport = CircuitBreakerTransport(breaker)
    _half_open(breaker, clock)
    limited = Reply.ok(headers={"x-ratelimit-remaining-requests": "99"})
    llm_server.script(limited, Reply.ok())

    def broken(self: CircuitBreaker, headers: Any) -> None:
        raise RuntimeError("observe broke")

    with httpx.Client(transport=transport, base_url=llm_server.url) as client:
        with monkeypatch.context() as patched:
            patched.setattr(CircuitBreaker, "observe", broken)
            try:
                client.post("/v1/chat/completions", json={"model": "m"})
                raise AssertionError("the error should reach the caller")
            except RuntimeError:
                pass
        gc.collect()
        assert breaker.stats.ignored == 1
        assert breaker.state is CircuitState.HALF_OPEN
        assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 200
    assert breaker.state is CircuitState.CLOSED
