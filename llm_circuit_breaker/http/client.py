"""``LLMCircuitBreaker``: call an LLM HTTP endpoint through a breaker and retries.

It composes the public pieces — ``with_retry(circuit_breaker(driver))`` — over the requests and
aiohttp drivers, which are imported on first use: a program that only decorates SDK calls
never loads either HTTP stack.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from llm_circuit_breaker import _validate as check
from llm_circuit_breaker._core.throttle import estimate_tokens
from llm_circuit_breaker._judge.results import retried_by_default
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.breaker.clock import running_library
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.http._common import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    PreparedRequest,
    prepare,
)
from llm_circuit_breaker.http._route import Route, acosted, costed, token_cost
from llm_circuit_breaker.http._sse import SSEEvent, retried_answer
from llm_circuit_breaker.strategies.retry import with_retry
from llm_circuit_breaker.strategies.scope import is_template

if TYPE_CHECKING:
    import aiohttp
    import requests

    from llm_circuit_breaker.http._aiohttp_driver import AsyncTransport
    from llm_circuit_breaker.http._requests_driver import SyncTransport

__all__ = ["LLMCircuitBreaker"]


from llm_circuit_breaker.config import RetryConfig

_unnamed = itertools.count(1)


class LLMCircuitBreaker:
    """A circuit breaker with retries around an HTTP JSON (or SSE) LLM endpoint.

    ``circuit_breaker`` and ``retry`` take :class:`CircuitBreakerConfig` fields and
    :func:`with_retry` options as dicts (snake_case; an unknown key is a ``TypeError`` with a
    did-you-mean hint). Facades with the same ``name`` share one breaker through ``registry``;
    without a name the facade gets a breaker of its own under a generated unique name, removed
    from the registry when the facade is closed. ``call`` uses a pooled ``requests.Session``,
    ``acall`` an ``aiohttp.ClientSession`` made on first use in each event loop (so threads each
    running their own loop can share a facade); pass your own
    with ``session=`` / ``client_session=`` (then closing them is yours).
    ``first_token_timeout`` bounds a stream's wait for its first *content* event (pings,
    keep-alives, role-only deltas do not count): ``RequestTimeoutError``, a failure, retried.
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
        first_token_timeout: float | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            refuse_options(unknown)
        self.first_token_timeout = (
            None
            if first_token_timeout is None
            else check.seconds("LLMCircuitBreaker", "first_token_timeout", first_token_timeout)
        )
        self._limits = {
            "max_response_bytes": check.count("", "max_response_bytes", max_response_bytes, 1),
            "max_event_bytes": check.count("", "max_event_bytes", max_event_bytes, 1),
        }
        fields = breaker_fields(circuit_breaker)
        options = dict(check.check_mapping(retry or {}, "retry"))
        if options.get("retry_on_result", retried_by_default) is retried_by_default:
            # the default also judges call()'s events of a streamed answer by their kind
            options["retry_on_result"] = retried_answer
        self._rejects = options["retry_on_result"]
        self._retrying = with_retry(**options)
        self._registry = registry
        self._owns_name = name is None
        self._fields = fields
        self._template = name if name is not None and is_template(name) else None
        self._routes: dict[str, Route] = {}
        if self._template is not None:  # one breaker per scope, made on first use
            self._default_config = CircuitBreakerConfig.from_mapping(fields)
            breaker: CircuitBreaker | None = None
            self.name = self._template
        elif name is None:
            config = CircuitBreakerConfig.from_mapping(fields)
            breaker = registry.get_or_create(f"llm-circuit-breaker-{next(_unnamed)}", config)
            # A facade dropped without close() still frees its name when it is collected.
            weakref.finalize(self, registry.discard, breaker)
            self.name = breaker.name
        else:
            breaker = registry.get_or_create_with(name, fields)
            self.name = breaker.name
        self._route = None if breaker is None else Route(self, breaker)
        self._headers = dict(headers or {})
        self._session = session
        self._client_session = client_session

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker of this facade; with a name template, ``TypeError``: each scope has
        its own (see :meth:`breaker_for`)."""
        if self._route is None:
            raise TypeError(
                f"LLMCircuitBreaker {self.name!r} has one breaker per scope: use "
                "breaker_for(url, data) or registry.scope(...)"
            )
        return self._route.breaker

    def breaker_for(self, url: str, data: Any = None) -> CircuitBreaker:
        """The breaker a call with ``url`` and ``data`` goes through."""
        return self._route_for(url, data).breaker

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (its ``timeout`` is the per-attempt timeout)."""
        return self._route.breaker.config if self._route is not None else self._default_config

    # -- drivers, loaded on first use ------------------------------------------------------

    @functools.cached_property
    def _sync(self) -> SyncTransport:
        from llm_circuit_breaker.http._requests_driver import SyncTransport

        return SyncTransport(self._session)

    @functools.cached_property
    def _async(self) -> AsyncTransport:
        from llm_circuit_breaker.http._aiohttp_driver import AsyncTransport

        return AsyncTransport(self._client_session)

    def _route_for(self, url: str, data: Any) -> Route:
        """The breaker's pipelines for a call (its scope's, with a name template)."""
        if self._route is not None:
            return self._route
        template = cast("str", self._template)
        values = dict(data) if isinstance(data, Mapping) else {}
        values.setdefault("host", urlsplit(url).hostname or "")
        try:
            name = template.format_map(values)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise TypeError(
                f"LLMCircuitBreaker name {template!r} needs {exc}, which this call's JSON body "
                "(or host) does not carry"
            ) from None
        route = self._routes.get(name)
        if route is None or not self._registry.touch(name):
            if len(self._routes) >= self._registry.max_breakers:
                self._routes.clear()
            breaker = self._registry.get_or_create_with(name, self._fields, scoped=True)
            route = self._routes[name] = Route(self, breaker)
        return route

    def _prepare(
        self,
        route: Route,
        url: str,
        method: str,
        headers: Mapping[str, str] | None,
        data: Any,
        *,
        asynchronous: bool = False,
    ) -> PreparedRequest:
        merged = {**self._headers, **(headers or {})}
        breaker = route.breaker
        return prepare(
            url,
            method,
            merged,
            data,
            breaker.config.timeout,
            **self._limits,
            observe=breaker.aobserve if asynchronous else breaker.observe,
        )

    # -- calls -----------------------------------------------------------------------------

    def call(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """Send ``data`` as JSON and return the parsed JSON response (requests)."""
        route = self._route_for(url, data)
        with token_cost(data):
            prepared = self._prepare(route, url, method, headers, data)
            return route.call(self._streaming(prepared, data))

    async def acall(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """Like :meth:`call`, with aiohttp (asyncio only)."""
        _asyncio_only("acall")
        route = self._route_for(url, data)
        with token_cost(data):
            prepared = self._prepare(route, url, method, headers, data, asynchronous=True)
            return await route.acall(self._streaming(prepared, data))

    def _streaming(self, prepared: PreparedRequest, data: Any) -> PreparedRequest:
        """``prepared`` with the first-token deadline when its body asks for a stream (a call
        reads the whole body, judged as it comes)."""
        streams = isinstance(data, Mapping) and data.get("stream") is True
        if self.first_token_timeout is None or not streams:
            return prepared
        return dataclasses.replace(prepared, first_token_timeout=self.first_token_timeout)

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
        route = self._route_for(url, data)
        events = route.stream(self._prepare(route, url, method, headers, data))
        cost = estimate_tokens(data) if route.breaker.reads_token_cost else 0  # else unread
        return costed(events, cost) if cost else events

    def astream(
        self,
        url: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> AsyncIterator[SSEEvent]:
        """Like :meth:`stream`, with aiohttp (asyncio only): ``async for event in
        cb.astream(...)``."""
        _asyncio_only("astream")
        route = self._route_for(url, data)
        prepared = self._prepare(route, url, method, headers, data, asynchronous=True)
        events = route.astream(prepared)
        cost = estimate_tokens(data) if route.breaker.reads_token_cost else 0  # else unread
        return acosted(events, cost) if cost else events

    def get_state(self) -> dict[str, Any]:
        """The breaker's snapshot: name, state, counts, ``retry_after`` and stats (with a name
        template: ``{"name": template, "scopes": {name: snapshot, ...}}``)."""
        if self._route is None:
            prefix = cast("str", self._template).partition("{")[0]
            scopes = {
                b.name: b.snapshot() for b in self._registry.breakers() if b.name.startswith(prefix)
            }
            return {"name": self.name, "scopes": scopes}
        return {"name": self.name, **self.breaker.snapshot()}

    # -- closing ---------------------------------------------------------------------------

    def _forget_unnamed(self) -> None:
        if self._owns_name and self._route is not None:
            self._registry.discard(self._route.breaker)

    def close(self) -> None:
        """Close the sessions this facade made: the requests session and every event loop's
        aiohttp session (one of a loop running in another thread is closed in that loop); and
        forget an unnamed breaker."""
        if "_sync" in self.__dict__:
            self._sync.close()
        if "_async" in self.__dict__:
            self._async.discard()
        self._forget_unnamed()

    async def aclose(self) -> None:
        """Close the requests session and the running event loop's aiohttp session this facade
        made, leaving other loops' sessions alone (and forget an unnamed breaker)."""
        if "_async" in self.__dict__:
            await self._async.aclose()
        if "_sync" in self.__dict__:
            self._sync.close()
        self._forget_unnamed()

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
        if self._route is None:
            return f"LLMCircuitBreaker(name={self.name!r}, scopes={len(self._routes)})"
        return f"LLMCircuitBreaker(name={self.name!r}, state={self.breaker.state.value})"


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
    "first_token_timeout",
)


def _asyncio_only(method: str) -> None:
    """aiohttp runs on asyncio alone: under trio, say what to use instead."""
    if running_library() == "trio":
        raise RuntimeError(
            f"LLMCircuitBreaker.{method}() sends with aiohttp, which runs on asyncio only, not "
            "under trio: use an httpx.AsyncClient with llm_circuit_breaker.httpx."
            "AsyncCircuitBreakerTransport, or call() in a thread (trio.to_thread.run_sync)"
        )


def refuse_options(unknown: Mapping[str, Any]) -> None:
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


def breaker_fields(value: Mapping[str, Any] | CircuitBreakerConfig | None) -> dict[str, Any]:
    """The ``circuit_breaker=`` argument as checked :class:`CircuitBreakerConfig` fields."""
    if value is None:
        return {}
    if isinstance(value, CircuitBreakerConfig):
        return value.as_fields()
    fields = dict(check.check_mapping(value, "circuit_breaker"))
    CircuitBreakerConfig.from_mapping(fields)  # names and values checked here
    return fields
