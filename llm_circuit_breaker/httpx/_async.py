"""``AsyncCircuitBreakerTransport``: the asyncio shell over :mod:`._core`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from llm_circuit_breaker._core.throttle import TOKEN_COST
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError
from llm_circuit_breaker.httpx._core import (
    Attempt,
    Body,
    Report,
    Transport,
    aread_capped,
    incomplete,
    library,
)

__all__ = ["AsyncCircuitBreakerTransport"]


async def _tell(attempt: Attempt, report: Report | None) -> None:
    if report is not None:
        outcome, details = report
        await attempt.breaker.arecord(attempt.permit, outcome, **details)


class _AsyncBody(Body):
    """A response body guarded to its end (mixed into the library's AsyncByteStream)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        attempt, watch = self._attempt, self._watch
        try:
            async for chunk in self._inner:
                error = watch.feed(chunk) if watch is not None else None
                if error is not None:
                    await _tell(attempt, attempt.failed(error))
                yield chunk
            if watch is not None and watch.truncated():
                raise incomplete(self._request)
        except GeneratorExit:
            raise
        except BaseException as exc:
            await _tell(attempt, attempt.failed(exc))
            raise
        if attempt.settle():
            await attempt.breaker.arecord_success(attempt.permit)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await _tell(self._attempt, self._attempt.closed(self._watch))


@functools.cache
def _body_type(lib: Any) -> type[_AsyncBody]:
    return type("GuardedBody", (_AsyncBody, lib.AsyncByteStream), {})


class AsyncCircuitBreakerTransport(Transport):
    """:class:`CircuitBreakerTransport` for ``httpx.AsyncClient`` (asyncio)."""

    async def handle_async_request(self, request: Any) -> Any:
        core = self._core
        breaker, body = core.breaker_and_body(request, asynchronous=True)
        token = TOKEN_COST.set(core.tokens(request, body))
        try:
            attempt = Attempt(breaker, await breaker.aadmit())
        except (CircuitOpenError, ThrottledError) as refused:
            return core.refused(request, refused)
        finally:
            TOKEN_COST.reset(token)
        streams = core.bound_first_byte(request, body)
        if self._inner is None:  # the client's own library's transport, pooled
            self._inner = library(request).AsyncHTTPTransport()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            await _tell(attempt, attempt.failed(exc))
            raise
        await breaker.aobserve(response.headers)
        if response.status_code >= 400:
            await _tell(attempt, attempt.answered(request, response, await aread_capped(response)))
            return response
        watch = core.after_headers(request, response, streams)
        response.stream = _body_type(library(response))(response.stream, attempt, watch, request)
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
