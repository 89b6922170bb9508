"""``LLMCircuitBreaker``: call an LLM HTTP endpoint through a breaker and retries.

It composes the public pieces — ``with_retry(circuit_breaker(driver))`` — over the requests and
aiohttp drivers, which are imported on first use: a program that only decorates SDK calls
never loads either HTTP stack.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker import _validate as check
from llm_circuit_breaker._throttle import TOKEN_COST, estimate_tokens
from llm_circuit_breaker.config import CircuitBreakerConfig, RetryConfig
from llm_circuit_breaker.decorators import circuit_breaker as guarded
from llm_circuit_breaker.http._common import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    PreparedRequest,
    prepare,
)
from llm_circuit_breaker.http._sse import SSEEvent
from llm_circuit_breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.retry import with_retry

if TYPE_CHECKING:
    import aiohttp
    import requests

    from llm_circuit_breaker.http._async import AsyncTransport
    from llm_circuit_breaker.http._sync import SyncTransport

__all__ = ["LLMCircuitBreaker"]

_unnamed = itertools.count(1)
_OPTIONS = (
    "name",
    "circuit_breaker",
    "retry",
    "registry",
    "headers",
    "session",
    "client_session",
    "max_response_bytes",
    "max_event_bytes",
)


class LLMCircuitBreaker:
    """A circuit breaker with retries around an HTTP JSON (or SSE) LLM endpoint.

    ``circuit_breaker`` and ``retry`` take :class:`CircuitBreakerConfig` fields and
    :func:`with_retry` options as dicts (snake_case; an unknown key is a ``TypeError`` with a
    did-you-mean hint). Facades with the same ``name`` share one breaker through ``registry``;
    without a name the facade gets a breaker of its own under a generated unique name, removed
    from the registry when the facade is closed. ``call`` uses a pooled ``requests.Session``,
    ``acall`` an ``aiohttp.ClientSession`` made on first use in each event loop; pass your own
    with ``session=`` / ``client_session=`` (then closing them is yours).
    """

    def __init__(
        self,
        name: str | None = None,
        circuit_breaker: Mapping[str, Any] | CircuitBreakerConfig | None = None,
        retry: Mapping[str, Any] | None = None,
        *,
        registry: BreakerRegistry = breaker_registry,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        client_session: aiohttp.ClientSession | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        **unknown: Any,
    ) -> None:
        if unknown:
            _refuse_options(unknown)
        self._limits = {
            "max_response_bytes": check.count("", "max_response_bytes", max_response_bytes, 1),
            "max_event_bytes": check.count("", "max_event_bytes", max_event_bytes, 1),
        }
        fields = _breaker_fields(circuit_breaker)
        self._retrying = with_retry(**check.check_mapping(retry or {}, "retry"))
        self._registry = registry
        self._owns_name = name is None
        if name is None:
            config = CircuitBreakerConfig.from_mapping(fields)
            self.breaker = registry.get_or_create(f"llm-circuit-breaker-{next(_unnamed)}", config)
            # A facade dropped without close() still frees its name when it is collected.
            weakref.finalize(self, registry.discard, self.breaker)
        else:
            self.breaker = registry.get_or_create_with(name, fields)
        self.name = self.breaker.name
        self._headers = dict(headers or {})
        self._session = session
        self._client_session = client_session
        self._guard = guarded(breaker=self.breaker)

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (its ``timeout`` is the per-attempt timeout)."""
        return self.breaker.config

    # -- drivers, loaded on first use ------------------------------------------------------

    @functools.cached_property
    def _sync(self) -> SyncTransport:
        from llm_circuit_breaker.http._sync import SyncTransport

        return SyncTransport(self._session, observe=self.breaker.observe)

    @functools.cached_property
    def _async(self) -> AsyncTransport:
        from llm_circuit_breaker.http._async import AsyncTransport

        return AsyncTransport(self._client_session, observe=self.breaker.aobserve)

    @functools.cached_property
    def _call(self) -> Callable[[PreparedRequest], Any]:
        self._sync_only()
        return self._retrying(self._guard(self._sync.request))

    @functools.cached_property
    def _stream(self) -> Callable[[PreparedRequest], Iterator[SSEEvent]]:
        self._sync_only()
        return self._retrying(self._guard(self._sync.stream))

    @functools.cached_property
    def _acall(self) -> Callable[[PreparedRequest], Any]:
        return self._retrying(self._guard(self._async.request))

    @functools.cached_property
    def _astream(self) -> Callable[[PreparedRequest], AsyncIterator[SSEEvent]]:
        return self._retrying(self._guard(self._async.stream))

    def _sync_only(self) -> None:
        if self.breaker.is_async:
            raise TypeError(
                "this facade's breaker keeps its state in an asyncio store: use acall / astream"
            )

    def _prepare(
        self, url: str, method: str, headers: Mapping[str, str] | None, data: Any
    ) -> PreparedRequest:
        merged = {**self._headers, **(headers or {})}
        return prepare(url, method, merged, data, self.breaker.config.timeout, **self._limits)

    # -- calls -----------------------------------------------------------------------------

    def call(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """Send ``data`` as JSON and return the parsed JSON response (requests)."""
        with _token_cost(data):
            return self._call(self._prepare(url, method, headers, data))

    async def acall(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """Like :meth:`call`, with aiohttp."""
        with _token_cost(data):
            return await self._acall(self._prepare(url, method, headers, data))

    def stream(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Iterator[SSEEvent]:
        """Yield the server-sent events of a streaming completion (requests).

        A failure before the first event is retried; one after it is raised, never re-sent.
        """
        events = self._stream(self._prepare(url, method, headers, data))
        cost = estimate_tokens(data)
        return _costed(events, cost) if cost else events

    def astream(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> AsyncIterator[SSEEvent]:
        """Like :meth:`stream`, with aiohttp: ``async for event in cb.astream(...)``."""
        events = self._astream(self._prepare(url, method, headers, data))
        cost = estimate_tokens(data)
        return _acosted(events, cost) if cost else events

    def get_state(self) -> dict[str, Any]:
        """The breaker's snapshot: name, state, counts, ``retry_after`` and stats."""
        return {"name": self.name, **self.breaker.snapshot()}

    # -- closing ---------------------------------------------------------------------------

    def _forget_unnamed(self) -> None:
        if self._owns_name:
            self._registry.discard(self.breaker)

    def close(self) -> None:
        """Close the requests session this facade made (and forget an unnamed breaker)."""
        if "_sync" in self.__dict__:
            self._sync.close()
        if "_async" in self.__dict__:
            self._async.discard()  # a session whose event loop has ended (asyncio.run(acall))
        self._forget_unnamed()

    async def aclose(self) -> None:
        """Close both sessions this facade made (and forget an unnamed breaker)."""
        if "_async" in self.__dict__:
            await self._async.aclose()
        self.close()

    def __enter__(self) -> LLMCircuitBreaker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> LLMCircuitBreaker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"LLMCircuitBreaker(name={self.name!r}, state={self.breaker.state.value})"


@contextlib.contextmanager
def _token_cost(data: Any) -> Iterator[None]:
    """Let the throttle know what this call will cost in tokens (its request body's estimate)."""
    token = TOKEN_COST.set(estimate_tokens(data))
    try:
        yield
    finally:
        TOKEN_COST.reset(token)


def _costed(events: Iterator[SSEEvent], cost: float) -> Iterator[SSEEvent]:
    """A stream whose admission (at its first event) knows what the call costs in tokens."""
    token = TOKEN_COST.set(cost)
    try:
        first = next(events, None)
    finally:
        TOKEN_COST.reset(token)
    if first is not None:
        yield first
        yield from events


async def _acosted(events: AsyncIterator[SSEEvent], cost: float) -> AsyncIterator[SSEEvent]:
    """:func:`_costed` for an async stream (closing it closes the stream)."""
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


def _refuse_options(unknown: Mapping[str, Any]) -> None:
    """``TypeError`` for unknown keyword arguments, pointing breaker and retry options to the
    dict they belong in (``timeout`` -> ``circuit_breaker={"timeout": ...}``)."""
    for key in unknown:
        for option, config in (("circuit_breaker", CircuitBreakerConfig), ("retry", RetryConfig)):
            try:
                config.check_names({key: None})
            except TypeError as exc:
                if "did you mean" in str(exc):
                    raise TypeError(
                        f"LLMCircuitBreaker: {key!r} is a {option} option ({exc}); "
                        f"pass it as {option}={{...}}"
                    ) from None
                continue
            raise TypeError(
                f"LLMCircuitBreaker: {key!r} is a {option} option: pass it as "
                f"{option}={{{key!r}: ...}} (times are seconds)"
            )
    check.check_option_names(unknown, _OPTIONS, "LLMCircuitBreaker")


def _breaker_fields(value: Mapping[str, Any] | CircuitBreakerConfig | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, CircuitBreakerConfig):
        return value.as_fields()
    fields = dict(check.check_mapping(value, "circuit_breaker"))
    CircuitBreakerConfig.from_mapping(fields)  # names and values checked here
    return fields
