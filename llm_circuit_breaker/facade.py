"""``LLMCircuitBreaker``: call an LLM HTTP endpoint through a breaker and retries.

It composes the public pieces — ``with_retry(circuit_breaker(driver))`` — over the requests and
aiohttp drivers; it re-implements neither the breaker nor the retries.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import requests

from llm_circuit_breaker.breaker import CircuitBreaker
from llm_circuit_breaker.config import CircuitBreakerConfig, check_field_names
from llm_circuit_breaker.decorators import circuit_breaker as guarded
from llm_circuit_breaker.http._async import AsyncTransport
from llm_circuit_breaker.http._common import PreparedRequest, SSEEvent, prepare
from llm_circuit_breaker.http._sync import SyncTransport
from llm_circuit_breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.retry import with_retry

__all__ = ["RETRY_OPTIONS", "LLMCircuitBreaker"]

RETRY_OPTIONS = tuple(
    name
    for name, parameter in inspect.signature(with_retry).parameters.items()
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
)
_unnamed = itertools.count(1)


class LLMCircuitBreaker:
    """A circuit breaker with retries around an HTTP JSON (or SSE) LLM endpoint.

    ``circuit_breaker`` and ``retry`` take :class:`CircuitBreakerConfig` fields and
    :func:`with_retry` arguments as dicts (snake_case; an unknown key is a ``TypeError``).
    Facades with the same ``name`` share one breaker through ``registry``; without a name the
    facade gets a breaker of its own under a generated unique name. ``call`` uses a pooled
    ``requests.Session``, ``acall`` an ``aiohttp.ClientSession`` made on first use; pass your
    own with ``session=`` / ``client_session=`` (then closing them is yours).
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
    ) -> None:
        fields = _breaker_fields(circuit_breaker)
        retry_options = dict(retry or {})
        check_field_names(retry_options, RETRY_OPTIONS, "retry")
        retrying = with_retry(**retry_options)  # validates the values before any breaker exists
        if name is None:
            config = CircuitBreakerConfig.from_mapping(fields)
            self.breaker = registry.add(
                CircuitBreaker(f"llm-circuit-breaker-{next(_unnamed)}", config)
            )
        else:
            self.breaker = registry.get_or_create_with(name, fields)
        self.name = self.breaker.name
        self._headers = dict(headers or {})
        self._sync = SyncTransport(session)
        self._async = AsyncTransport(client_session)
        guard = guarded(breaker=self.breaker)
        self._acall = retrying(guard(self._async.request))
        self._astream = retrying(guard(self._async.stream))
        if self.breaker.is_async:  # an asyncio store can guard only the aiohttp helpers
            self._call = self._stream = _asyncio_store_only
        else:
            self._call = retrying(guard(self._sync.request))
            self._stream = retrying(guard(self._sync.stream))

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (its ``timeout`` is the per-attempt timeout)."""
        return self.breaker.config

    def _prepare(
        self, url: str, method: str, headers: Mapping[str, str] | None, data: Any
    ) -> PreparedRequest:
        merged = {**self._headers, **(headers or {})}
        return prepare(url, method, merged, data, self.breaker.config.timeout)

    def call(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """Send ``data`` as JSON and return the parsed JSON response (requests)."""
        return self._call(self._prepare(url, method, headers, data))

    async def acall(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """Like :meth:`call`, with aiohttp."""
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
        events: Iterator[SSEEvent] = self._stream(self._prepare(url, method, headers, data))
        return events

    def astream(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> AsyncIterator[SSEEvent]:
        """Like :meth:`stream`, with aiohttp: ``async for event in cb.astream(...)``."""
        return self._astream(self._prepare(url, method, headers, data))

    def get_state(self) -> dict[str, Any]:
        """The breaker's snapshot: name, state, counts, ``retry_after`` and stats."""
        return {"name": self.name, **self.breaker.snapshot()}

    def close(self) -> None:
        """Close the requests session this facade made."""
        self._sync.close()

    async def aclose(self) -> None:
        """Close both sessions this facade made."""
        self._sync.close()
        await self._async.aclose()

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


def _asyncio_store_only(request: PreparedRequest) -> Any:
    raise TypeError(
        "this facade's breaker keeps its state in an asyncio store: use acall / astream"
    )


def _breaker_fields(value: Mapping[str, Any] | CircuitBreakerConfig | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, CircuitBreakerConfig):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"circuit_breaker must be a dict of config fields or a CircuitBreakerConfig, "
            f"got {type(value).__name__}"
        )
    fields = dict(value)
    CircuitBreakerConfig.from_mapping(fields)  # names and values checked here
    return fields
