"""What a facade runs a call through: one breaker's pipelines, and the token cost of a call."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from llm_circuit_breaker._core.throttle import TOKEN_COST, estimate_tokens
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.errors import InvalidResponseError
from llm_circuit_breaker.http._common import PreparedRequest
from llm_circuit_breaker.http._sse import SSEEvent, Unanswered
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
    @property
    def _rejects(self) -> Callable[[Any], object] | None: ...


__all__ = ["Route", "acosted", "costed", "token_cost"]


class Route:
    """One breaker's pipelines: ``with_retry(circuit_breaker(driver))`` for each call kind.

    A whole answer of server-sent events (or a stream's one JSON event) that answers nothing
    raises :class:`Unanswered` at its end, inside the guard (which ignores it: no outage) and
    is caught right outside it: a stream ends; ``call()`` raises
    ``InvalidResponseError(kind, events)`` when the retry policy retries the events (by
    default ``empty`` and ``invalid_tool_arguments``, as for a JSON answer), else returns
    them (their ``non_answer`` names the kind). (A JSON answer to ``call()`` is judged by the
    guard itself.)"""

    def __init__(self, facade: Facade, breaker: CircuitBreaker) -> None:
        self.facade = facade
        self.breaker = breaker
        self.guard = guarded(breaker=breaker, exclude=(Unanswered,))
        if facade.first_token_timeout is not None:  # for the streams: a call reads a whole body
            self.stream_guard = guarded(
                breaker=breaker,
                first_token_timeout=facade.first_token_timeout,
                exclude=(Unanswered,),
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
        return self.facade._retrying(
            _returned(self.guard(self.facade._sync.request), self.facade._rejects)
        )

    @functools.cached_property
    def stream(self) -> Callable[[PreparedRequest], Iterator[SSEEvent]]:
        self._sync_only()
        return self.facade._retrying(_ended(self.stream_guard(self.facade._sync.stream)))

    @functools.cached_property
    def acall(self) -> Callable[[PreparedRequest], Any]:
        return self.facade._retrying(
            _areturned(self.guard(self.facade._async.request), self.facade._rejects)
        )

    @functools.cached_property
    def astream(self) -> Callable[[PreparedRequest], AsyncIterator[SSEEvent]]:
        return self.facade._retrying(_aended(self.stream_guard(self.facade._async.stream)))


def _returned(
    request: Callable[[PreparedRequest], Any], rejects: Callable[[Any], object] | None
) -> Callable[[PreparedRequest], Any]:
    """``request``, for the events of an answer that answers nothing: raising
    ``InvalidResponseError`` when ``rejects`` them (the retry policy's ``retry_on_result``:
    with_retry retries, then raises it), else returning them."""

    @functools.wraps(request)  # its .breaker too: with_retry counts retries on it
    def call(prepared: PreparedRequest) -> Any:
        try:
            return request(prepared)
        except Unanswered as unanswered:
            return _unanswered(unanswered, rejects)

    return call


def _areturned(
    request: Callable[[PreparedRequest], Any], rejects: Callable[[Any], object] | None
) -> Callable[[PreparedRequest], Any]:
    """:func:`_returned` for a coroutine function."""

    @functools.wraps(request)
    async def call(prepared: PreparedRequest) -> Any:
        try:
            return await request(prepared)
        except Unanswered as unanswered:
            return _unanswered(unanswered, rejects)

    return call


def _unanswered(unanswered: Unanswered, rejects: Callable[[Any], object] | None) -> Any:
    events = unanswered.events
    if rejects is not None and rejects(events):
        raise InvalidResponseError(unanswered.kind, events) from None
    return events


def _ended(
    stream: Callable[[PreparedRequest], Iterator[SSEEvent]],
) -> Callable[[PreparedRequest], Iterator[SSEEvent]]:
    """``stream``, ending quietly after the events of an answer that answers nothing."""

    @functools.wraps(stream)
    def events(prepared: PreparedRequest) -> Iterator[SSEEvent]:
        try:
            yield from stream(prepared)
        except Unanswered:
            return

    return events


def _aended(
    stream: Callable[[PreparedRequest], AsyncIterator[SSEEvent]],
) -> Callable[[PreparedRequest], AsyncIterator[SSEEvent]]:
    """:func:`_ended` for an async stream (closing it closes the stream)."""

    @functools.wraps(stream)
    async def events(prepared: PreparedRequest) -> AsyncIterator[SSEEvent]:
        inner = stream(prepared)
        try:
            async for event in inner:
                yield event
        except Unanswered:
            return
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

    return events


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
