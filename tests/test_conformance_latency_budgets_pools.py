"""Conformance probes of SPEC sections 15-17 (hedging, budgets, results, pools, concurrency)
written from the SPEC's sentences, each against the behaviour an application developer would
rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llm_circuit_breaker import BreakerRegistry, circuit_breaker, with_pool


class _SDKStream:
    """A returned stream shaped like the openai SDK's ``Stream``: an iterator with ``close``."""

    def __init__(self, items: list[str]) -> None:
        self._items = iter(items)
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.closed:
            raise StopIteration
        return next(self._items)

    def close(self) -> None:
        self.closed = True


class _AsyncSDKStream:
    """The openai SDK's ``AsyncStream`` shape: an async iterator with ``aclose``."""

    def __init__(self, items: list[str]) -> None:
        self._items = iter(items)
        self.closed = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self.closed:
            raise StopAsyncIteration
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.closed = True


# -- SPEC 17: least_busy counts a returned stream in flight until it ends or is closed -------


def test_pool_counts_a_returned_stream_in_flight_until_it_is_closed() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("east", registry=registry)
    def east() -> _SDKStream:
        return _SDKStream(["east", "more"])

    @circuit_breaker("west", registry=registry)
    def west() -> _SDKStream:
        return _SDKStream(["west", "more"])

    pool: Any = with_pool(east, west, strategy="least_busy")
    held = pool()  # read from east, kept open
    assert next(iter(held)) == "east"
    assert pool.pool_stats["east"].in_flight == 1
    done = pool()  # west: east has a call in flight
    assert next(iter(done)) == "west"
    done.close()
    assert pool.pool_stats["west"].in_flight == 0
    # east still streams: every further call goes to west, whatever the turn
    for _ in range(3):
        stream = pool()
        assert next(iter(stream)) == "west"
        assert list(stream) == ["more"]  # read to its end: no longer in flight
    assert pool.pool_stats["west"].in_flight == 0
    held.close()
    assert pool.pool_stats["east"].in_flight == 0
    assert pool.pool_stats["east"].served == 1 and pool.pool_stats["west"].served == 4


def test_async_pool_counts_a_returned_stream_in_flight_until_it_ends() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("east", registry=registry)
    async def east() -> _AsyncSDKStream:
        return _AsyncSDKStream(["east", "more"])

    @circuit_breaker("west", registry=registry)
    async def west() -> _AsyncSDKStream:
        return _AsyncSDKStream(["west", "more"])

    async def main() -> None:
        pool: Any = with_pool(east, west, strategy="least_busy")
        held: Any = await pool()
        assert await held.__anext__() == "east"
        assert pool.pool_stats["east"].in_flight == 1
        for _ in range(3):
            stream: Any = await pool()
            assert [item async for item in stream] == ["west", "more"]
        assert pool.pool_stats["west"].in_flight == 0
        await held.aclose()
        assert pool.pool_stats["east"].in_flight == 0

    asyncio.run(main())
