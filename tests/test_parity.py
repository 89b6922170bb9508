"""The parity matrix: every callable kind, on every kind of store, reports every way a call can
end in the same way.

Four kinds (plain, coroutine, generator, async generator functions; the plain and coroutine
ones returning a stream for the "closed early" ending) x three stores (none, a sync store, an
asyncio store) x five endings, each started in CLOSED and in HALF_OPEN (a probe). A success
counts a success, a provider's failure a failure, a caller's fault, a stream closed before its
end and a cancelled call count as ignored -- and an ignored probe frees the probe slot at once,
so the next call is admitted. A hand-written sync/async twin that drifts fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, circuit_breaker
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.storage import MemoryStateStore, RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests.redis_server import RedisServer

KINDS = ["plain", "coroutine", "generator", "async_generator"]
STORES = ["none", "sync", "asyncio"]
ENDINGS = ["success", "failure", "ignored", "closed_early", "cancelled"]
COUNTED = {
    "success": "successes",
    "failure": "failures",
    "ignored": "ignored",
    "closed_early": "ignored",
    "cancelled": "ignored",
}


class Cancelled(Exception):
    """Stands for the runtime's cancellation in sync code (raised as KeyboardInterrupt)."""


def _ending_error(ending: str, is_async: bool) -> BaseException | None:
    if ending == "failure":
        return http_status_error(503, body={"error": {"message": "down"}})
    if ending == "ignored":
        return http_status_error(404, body={"error": {"message": "no such model"}})
    if ending == "cancelled" and not is_async:
        return KeyboardInterrupt()  # what a sync call ends with when interrupted
    return None


RUNNING: list[asyncio.Event] = []  # set once an async call's body runs (it was admitted)


def _make(kind: str, ending: str) -> Callable[..., Any]:
    """A function of ``kind`` that ends as ``ending`` says."""
    is_async = kind in ("coroutine", "async_generator")
    error = _ending_error(ending, is_async)

    if kind == "plain":

        def plain() -> Any:
            if error is not None:
                raise error
            return iter([1, 2, 3]) if ending == "closed_early" else "ok"

        return plain
    if kind == "coroutine":

        async def coroutine() -> Any:
            if ending == "cancelled":
                RUNNING[-1].set()
                await asyncio.Event().wait()
            if error is not None:
                raise error
            if ending == "closed_early":

                async def stream() -> AsyncIterator[int]:
                    for i in range(3):
                        yield i

                return stream()
            return "ok"

        return coroutine
    if kind == "generator":

        def generator() -> Iterator[int]:
            yield 1
            if error is not None:
                raise error
            yield 2

        return generator

    async def async_generator() -> AsyncIterator[int]:
        yield 1
        if ending == "cancelled":
            RUNNING[-1].set()
            await asyncio.Event().wait()
        if error is not None:
            raise error
        yield 2

    return async_generator


async def _drive(kind: str, ending: str, guarded: Callable[..., Any]) -> None:
    """Call ``guarded`` and end the call as ``ending`` says (errors raised by design swallowed)."""
    expected: tuple[type[BaseException], ...] = (Exception, KeyboardInterrupt)
    if kind == "plain":
        try:
            result = guarded()
        except expected:
            return
        if ending == "closed_early":
            next(result)
            result.close()
    elif kind == "coroutine":
        RUNNING.append(asyncio.Event())
        task = asyncio.ensure_future(guarded())
        if ending == "cancelled":
            await RUNNING[-1].wait()  # cancelled inside the call, not during its admission
            task.cancel()
        try:
            result = await task
        except (*expected, asyncio.CancelledError):
            return
        if ending == "closed_early":
            await result.__anext__()
            await result.aclose()
    elif kind == "generator":
        gen = guarded()
        try:
            next(gen)
            if ending == "closed_early":
                gen.close()
                return
            list(gen)
        except expected:
            return
    else:
        agen = guarded()

        async def consume() -> None:
            await agen.__anext__()
            if ending == "closed_early":
                await agen.aclose()
                return
            async for _ in agen:
                pass

        RUNNING.append(asyncio.Event())
        task = asyncio.ensure_future(consume())
        if ending == "cancelled":
            await RUNNING[-1].wait()
            task.cancel()
        try:
            await task
        except (*expected, asyncio.CancelledError):
            return


@pytest.fixture
def stores(request: pytest.FixtureRequest) -> Callable[[str, FakeClock], Any]:
    made: list[Any] = []

    def make(kind: str, clock: FakeClock) -> Any:
        if kind == "none":
            return None
        if kind == "sync":
            return MemoryStateStore(clock=clock)
        server: RedisServer = request.getfixturevalue("redis_server")
        sync_client = redis.Redis(port=server.port)
        sync_client.flushall()
        sync_client.close()
        store = RedisStateStore.from_url(server.url, asyncio=True, clock=clock, timeout=2)
        made.append(store)
        return store

    return make


async def _state(breaker: CircuitBreaker) -> CircuitState:
    if breaker.is_async:
        return CircuitState((await breaker.asnapshot())["state"])
    return breaker.state


@pytest.mark.parametrize("phase", ["closed", "half_open"])
@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("store_kind", STORES)
@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_reports_every_ending_alike(
    kind: str,
    store_kind: str,
    ending: str,
    phase: str,
    stores: Callable[[str, FakeClock], Any],
) -> None:
    clock = FakeClock(start=1000.0)
    store = stores(store_kind, clock)
    config = CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0, success_threshold=1)
    breaker = CircuitBreaker(
        f"parity-{kind}-{store_kind}-{ending}", config, clock=clock, store=store
    )
    decorate = circuit_breaker(breaker=breaker)
    if store_kind == "asyncio" and kind in ("plain", "generator"):
        with pytest.raises(TypeError, match="asyncio store"):
            decorate(_make(kind, ending))
        return
    if phase == "half_open":  # one failure opens it; the reset timeout lets a probe through
        trip = decorate(_make("coroutine" if breaker.is_async else "plain", "failure"))
        with pytest.raises(Exception, match="503"):
            await trip() if breaker.is_async else trip()
        clock.advance(10.0)
        assert await _state(breaker) is CircuitState.HALF_OPEN
    before = breaker.stats

    await _drive(kind, ending, decorate(_make(kind, ending)))

    after = breaker.stats
    counted = COUNTED[ending]
    assert getattr(after, counted) - getattr(before, counted) == 1, (after, before)
    others = {"successes", "failures", "ignored"} - {counted}
    assert all(getattr(after, name) == getattr(before, name) for name in others), (after, before)
    if phase == "half_open" and counted == "ignored":
        # The probe slot is free again: the next call is the probe, and its success closes.
        follow = decorate(_make("coroutine" if breaker.is_async else "plain", "success"))
        assert (await follow() if breaker.is_async else follow()) == "ok"
        assert await _state(breaker) is CircuitState.CLOSED
    if store is not None and store_kind == "asyncio":
        await store.client.aclose()
