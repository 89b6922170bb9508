"""What a facade runs a call through: one breaker's pipelines, and the token cost of a call."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from llm_circuit_breaker._core.throttle import TOKEN_COST, estimate_tokens
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.http._common import PreparedRequest
from llm_circuit_breaker.http._sse import SSEEvent
from llm_circuit_breaker.strategies.circuit import circuit_breaker as guarded


class Facade(Protocol):
    """What a route needs of its ``LLMCircuitBreaker``: the two drivers and its retry policy."""

    @property
    def _sync(self) -> Any: ...
    @property
    def _async(self) -> Any: ...
    def _retrying(self, func: Callable[..., Any]) -> Callable[..., Any]: ...
    @property
    def first_token_timeout(self) -> float | None: ...


__all__ = ["Route", "acosted", "costed", "token_cost"]


class Route:
    """One breaker's pipelines: ``with_retry(circuit_breaker(driver))`` for each call kind."""

    def __init__(self, facade: Facade, breaker: CircuitBreaker) -> None:
        self.facade = facade
        self.breaker = breaker
        self.guard = guarded(breaker=breaker)
        if facade.first_token_timeout is not None:  # for the streams: a call reads a whole body
            self.stream_guard = guarded(
                breaker=breaker, first_token_timeout=facade.first_token_timeout
            )
        else:
            self.stream_guard = self.guard

    def _sync_only(self) -> None:
        if self.breaker.is_async:
            raise TypeError(
                "this facade's breaker keeps its state in an asyncio store: use acall / astream"
            )

    @functools.cached_property
    def call(self) -> Callable[[PreparedRequest], Any]:
        self._sync_only()
        return self.facade._retrying(self.guard(self.facade._sync.request))

    @functools.cached_property
    def stream(self) -> Callable[[PreparedRequest], Iterator[SSEEvent]]:
        self._sync_only()
        return self.facade._retrying(self.stream_guard(self.facade._sync.stream))

    @functools.cached_property
    def acall(self) -> Callable[[PreparedRequest], Any]:
        return self.facade._retrying(self.guard(self.facade._async.request))

    @functools.cached_property
    def astream(self) -> Callable[[PreparedRequest], AsyncIterator[SSEEvent]]:
        return self.facade._retrying(self.stream_guard(self.facade._async.stream))


@contextlib.contextmanager
def token_cost(data: Any) -> Iterator[None]:
    """Let the throttle know what this call will cost in tokens (its request body's estimate)."""
    token = TOKEN_COST.set(estimate_tokens(data))
    try:
        yield
    finally:
        TOKEN_COST.reset(token)


def costed(events: Iterator[SSEEvent], cost: float) -> Iterator[SSEEvent]:
    """A stream whose admission (at its first event) knows what the call costs in tokens."""
    token = TOKEN_COST.set(cost)
    try:
        first = next(events, None)
    finally:
        TOKEN_COST.reset(token)
    if first is not None:
        yield first
        yield from events


async def acosted(events: AsyncIterator[SSEEvent], cost: float) -> AsyncIterator[SSEEvent]:
    """:func:`costed` for an async stream (closing it closes the stream)."""
    token = TOKEN_COST.set(cost)
    try:
        first = await anext(events, None)
    finally:
        TOKEN_COST.reset(token)
    try:
        if first is not None:
            yield first
            async for event in events:
                yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]
