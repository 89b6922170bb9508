"""``CircuitBreakerTransport``: the sync shell over :mod:`._core`."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from llm_circuit_breaker._core.throttle import TOKEN_COST
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError
from llm_circuit_breaker.httpx._core import (
    Attempt,
    Body,
    Report,
    Transport,
    incomplete,
    library,
    read_capped,
)

__all__ = ["CircuitBreakerTransport"]


def _tell(attempt: Attempt, report: Report | None) -> None:
    if report is not None:
        outcome, details = report
        attempt.breaker.record(attempt.permit, outcome, **details)


class _SyncBody(Body):
    """A response body guarded to its end (mixed into the library's SyncByteStream)."""

    def __iter__(self) -> Iterator[bytes]:
        attempt, watch = self._attempt, self._watch
        try:
            for chunk in self._inner:
                error = watch.feed(chunk) if watch is not None else None
                if error is not None:  # the SDK raises its own error for the frame
                    _tell(attempt, attempt.failed(error))
                yield chunk
            if watch is not None and watch.truncated():
                raise incomplete(self._request)
        except GeneratorExit:
            raise
        except BaseException as exc:
            _tell(attempt, attempt.failed(exc))
            raise
        if attempt.settle():
            attempt.breaker.record_success(attempt.permit)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            _tell(self._attempt, self._attempt.closed(self._watch))


@functools.cache
def _body_type(lib: Any) -> type[_SyncBody]:
    return type("GuardedBody", (_SyncBody, lib.SyncByteStream), {})


class CircuitBreakerTransport(Transport):
    """An httpx (or httpx2) transport that guards every attempt with a breaker (sync)."""

    def handle_request(self, request: Any) -> Any:
        core = self._core
        breaker, body = core.breaker_and_body(request, asynchronous=False)
        token = TOKEN_COST.set(core.tokens(request, body))
        try:
            attempt = Attempt(breaker, breaker.admit())
        except (CircuitOpenError, ThrottledError) as refused:
            return core.refused(request, refused)
        finally:
            TOKEN_COST.reset(token)
        streams = core.bound_first_byte(request, body)
        if self._inner is None:  # the client's own library's transport, pooled
            self._inner = library(request).HTTPTransport()
        try:
            response = self._inner.handle_request(request)
        except BaseException as exc:
            _tell(attempt, attempt.failed(exc))
            raise
        breaker.observe(response.headers)
        if response.status_code >= 400:
            _tell(attempt, attempt.answered(request, response, read_capped(response)))
            return response
        watch = core.after_headers(request, response, streams)
        response.stream = _body_type(library(response))(response.stream, attempt, watch, request)
        return response

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def __enter__(self) -> CircuitBreakerTransport:
        if self._inner is not None:
            self._inner.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
