"""``AsyncCircuitBreakerTransport``: the asyncio shell over :mod:`._core`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from llm_circuit_breaker._state import Outcome
from llm_circuit_breaker._throttle import TOKEN_COST
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError
from llm_circuit_breaker.httpx._core import (
    Attempt,
    BreakerSpec,
    Core,
    Watch,
    aread_capped,
    incomplete,
    library,
)
from llm_circuit_breaker.registry import BreakerRegistry

__all__ = ["AsyncCircuitBreakerTransport"]


class _AsyncBody:
    """A response body guarded to its end (mixed into the library's AsyncByteStream)."""

    def __init__(self, inner: Any, attempt: Attempt, watch: Watch | None, request: Any):
        self._inner = inner
        self._attempt = attempt
        self._watch = watch
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        attempt, watch = self._attempt, self._watch
        try:
            async for chunk in self._inner:
                if watch is not None:
                    error = watch.feed(chunk)
                    if error is not None:
                        await _arecord(attempt, error)
                yield chunk
            if watch is not None and watch.truncated():
                raise incomplete(self._request)
        except GeneratorExit:
            raise
        except BaseException as exc:
            await _arecord(attempt, exc)
            raise
        if attempt.settle():
            await attempt.breaker.arecord_success(attempt.permit)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            attempt = self._attempt
            if attempt.settle():
                if self._watch is not None and self._watch.complete:
                    await attempt.breaker.arecord_success(attempt.permit)
                else:
                    await attempt.breaker.arecord(attempt.permit, Outcome.IGNORED)


async def _arecord(attempt: Attempt, exc: BaseException) -> None:
    v = attempt.verdict(exc)
    if v is not None:
        await attempt.breaker.arecord(
            attempt.permit, v.outcome, open_for=v.open_for, why=v.reason, error=exc, hint=v.hint
        )


@functools.cache
def _async_body_type(lib: Any) -> type[_AsyncBody]:
    return type("GuardedBody", (_AsyncBody, lib.AsyncByteStream), {})


class AsyncCircuitBreakerTransport:
    """:class:`CircuitBreakerTransport` for ``httpx.AsyncClient`` (asyncio)."""

    def __init__(
        self,
        breaker: BreakerSpec = "default",
        transport: Any = None,
        *,
        registry: BreakerRegistry | None = None,
        first_byte_timeout: float | None = None,
        idle_timeout: float | None = None,
        **fields: Any,
    ) -> None:
        self._core = Core(breaker, registry, first_byte_timeout, idle_timeout, fields)
        self._inner = transport

    def _transport(self, request: Any) -> Any:
        if self._inner is None:
            self._inner = library(request).AsyncHTTPTransport()
        return self._inner

    async def handle_async_request(self, request: Any) -> Any:
        core = self._core
        body = core.body_of(request)
        breaker = core.breaker_for(request, body)
        token = TOKEN_COST.set(core.tokens(request, body))
        try:
            permit = await breaker.aadmit()
        except (CircuitOpenError, ThrottledError) as refused:
            return core.refused(request, refused)
        finally:
            TOKEN_COST.reset(token)
        attempt = Attempt(breaker, permit)
        streams = core.bound_first_byte(request, body)
        try:
            response = await self._transport(request).handle_async_request(request)
        except BaseException as exc:
            await _arecord(attempt, exc)
            raise
        await breaker.aobserve(response.headers)
        if response.status_code >= 400:
            content = await aread_capped(response)
            verdict, error = core.judge_status(breaker, request, response, content)
            if attempt.settle():
                await breaker.arecord(
                    permit,
                    verdict.outcome,
                    open_for=verdict.open_for,
                    why=verdict.reason,
                    error=error,
                    hint=verdict.hint,
                )
            return response
        watch = core.after_headers(request, response, streams)
        response.stream = _async_body_type(library(response))(
            response.stream, attempt, watch, request
        )
        return response

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()

    async def __aenter__(self) -> AsyncCircuitBreakerTransport:
        if self._inner is not None:
            await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
