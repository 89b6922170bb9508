"""``CircuitBreakerTransport``: the sync shell over :mod:`._core`."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from llm_circuit_breaker._state import Outcome
from llm_circuit_breaker._throttle import TOKEN_COST
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError
from llm_circuit_breaker.httpx._core import (
    Attempt,
    BreakerSpec,
    Core,
    Watch,
    incomplete,
    library,
    read_capped,
)
from llm_circuit_breaker.registry import BreakerRegistry

__all__ = ["CircuitBreakerTransport"]


class _SyncBody:
    """A response body guarded to its end (mixed into the library's SyncByteStream)."""

    def __init__(self, inner: Any, attempt: Attempt, watch: Watch | None, request: Any):
        self._inner = inner
        self._attempt = attempt
        self._watch = watch
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        attempt, watch = self._attempt, self._watch
        try:
            for chunk in self._inner:
                if watch is not None:
                    error = watch.feed(chunk)
                    if error is not None:  # the SDK raises its own error for the frame
                        _record(attempt, error)
                yield chunk
            if watch is not None and watch.truncated():
                raise incomplete(self._request)
        except GeneratorExit:
            raise
        except BaseException as exc:
            _record(attempt, exc)
            raise
        if attempt.settle():
            attempt.breaker.record_success(attempt.permit)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            attempt = self._attempt
            if attempt.settle():
                if self._watch is not None and self._watch.complete:  # read to its final event
                    attempt.breaker.record_success(attempt.permit)
                else:  # the caller stopped reading: neither kind of outcome
                    attempt.breaker.record(attempt.permit, Outcome.IGNORED)


def _record(attempt: Attempt, exc: BaseException) -> None:
    v = attempt.verdict(exc)
    if v is not None:
        attempt.breaker.record(
            attempt.permit, v.outcome, open_for=v.open_for, why=v.reason, error=exc, hint=v.hint
        )


@functools.cache
def _sync_body_type(lib: Any) -> type[_SyncBody]:
    return type("GuardedBody", (_SyncBody, lib.SyncByteStream), {})


class CircuitBreakerTransport:
    """An httpx (or httpx2) transport that guards every attempt with a breaker (sync)."""

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
        if self._inner is None:  # the client's own library's transport, pooled
            self._inner = library(request).HTTPTransport()
        return self._inner

    def handle_request(self, request: Any) -> Any:
        core = self._core
        body = core.body_of(request)
        breaker = core.breaker_for(request, body)
        if breaker.is_async:
            raise TypeError(
                f"circuit {breaker.name!r} keeps its state in an asyncio store: "
                "use AsyncCircuitBreakerTransport"
            )
        token = TOKEN_COST.set(core.tokens(request, body))
        try:
            permit = breaker.admit()
        except (CircuitOpenError, ThrottledError) as refused:
            return core.refused(request, refused)
        finally:
            TOKEN_COST.reset(token)
        attempt = Attempt(breaker, permit)
        streams = core.bound_first_byte(request, body)
        try:
            response = self._transport(request).handle_request(request)
        except BaseException as exc:
            _record(attempt, exc)
            raise
        breaker.observe(response.headers)
        if response.status_code >= 400:
            content = read_capped(response)
            verdict, error = core.judge_status(breaker, request, response, content)
            if attempt.settle():
                breaker.record(
                    permit,
                    verdict.outcome,
                    open_for=verdict.open_for,
                    why=verdict.reason,
                    error=error,
                    hint=verdict.hint,
                )
            return response
        watch = core.after_headers(request, response, streams)
        response.stream = _sync_body_type(library(response))(
            response.stream, attempt, watch, request
        )
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
