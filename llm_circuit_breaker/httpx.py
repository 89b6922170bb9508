"""Any httpx-based SDK guarded with no other code change (extra ``httpx``).

::

    import httpx, openai
    from llm_circuit_breaker.httpx import CircuitBreakerTransport
    client = openai.OpenAI(http_client=httpx.Client(transport=CircuitBreakerTransport("openai")))

:class:`CircuitBreakerTransport` / :class:`AsyncCircuitBreakerTransport` wrap another transport
(by default the HTTP transport of the client's own library: ``httpx``, or ``httpx2`` for SDKs
built on it) and put every attempt through a breaker and its throttle:

* A refused attempt sends nothing. The transport answers it itself: HTTP 503 (circuit open) or
  429 (throttled) with ``x-should-retry: false``, so an SDK never retries or sleeps on it
  whatever its ``max_retries``; :func:`refusal` reads the :class:`CircuitOpenError` /
  :class:`ThrottledError` (with ``retry_after``) back from the SDK's error.
* A response is judged by the same verdict as an exception (status, headers and body), and
  every response's rate-limit headers feed the throttle.
* A response body is guarded to its end: a disconnect, an error event inside a 200 stream and a
  stream cut before its final event count as failures (the last raises
  :class:`IncompleteStreamError`, also the library's ``RemoteProtocolError``, which the SDK
  surfaces); a body the caller stops reading counts as neither success nor failure.
* ``first_byte_timeout`` bounds a streaming request's wait for the response headers and
  ``idle_timeout`` a stream's longest silence after them (the read timeout of each read).

``breaker=`` is a name (a template such as ``"openai:{model}"`` is filled from the request's
JSON body and ``host``: one breaker per model), a :class:`CircuitBreaker`, or a callable
``request -> name``. Breakers are made in ``registry`` with the config ``fields`` given.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from llm_circuit_breaker._refusal import REFUSAL, refusal_of
from llm_circuit_breaker._state import Outcome
from llm_circuit_breaker._throttle import TOKEN_COST, estimate_tokens
from llm_circuit_breaker._verdict import judge
from llm_circuit_breaker.breaker import CircuitBreaker
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.errors import (
    CircuitOpenError,
    IncompleteStreamError,
    ThrottledError,
    http_status_error,
)
from llm_circuit_breaker.registry import BreakerRegistry, breaker_registry

__all__ = ["AsyncCircuitBreakerTransport", "CircuitBreakerTransport", "refusal"]

refusal = refusal_of

BreakerSpec = str | CircuitBreaker | Callable[[Any], str]
_MAX_PARSED_BODY = 4 * 1024 * 1024  # request bodies parsed for the model and a token estimate
_MAX_ERROR_BODY = 256 * 1024  # of an error response, read to judge it


class _Core:
    """What both transports share: naming the breaker, reading the request, answering a
    refusal, judging a response and preparing its guarded body. No I/O."""

    def __init__(
        self,
        breaker: BreakerSpec,
        registry: BreakerRegistry | None,
        first_byte_timeout: float | None,
        idle_timeout: float | None,
        fields: dict[str, Any],
    ) -> None:
        from llm_circuit_breaker._validate import seconds

        if not (isinstance(breaker, str | CircuitBreaker) or callable(breaker)):
            raise TypeError(
                f"breaker must be a name, a CircuitBreaker or a callable request -> name, "
                f"got {type(breaker).__name__}"
            )
        self.spec = breaker
        self.registry = breaker_registry if registry is None else registry
        owner = "CircuitBreakerTransport"
        self.first_byte_timeout = (
            None
            if first_byte_timeout is None
            else seconds(owner, "first_byte_timeout", first_byte_timeout)
        )
        self.idle_timeout = (
            None if idle_timeout is None else seconds(owner, "idle_timeout", idle_timeout)
        )
        self.fields = fields
        self.config = CircuitBreakerConfig(**fields) if fields else None
        self.template = isinstance(breaker, str) and "{" in breaker

    # -- the request -------------------------------------------------------------------------

    def body_of(self, request: Any) -> Any:
        """The request's JSON body, when it has a small one (else None)."""
        try:
            content = request.content
        except Exception:  # a streaming body, not read: nothing to learn from it
            return None
        if not content or len(content) > _MAX_PARSED_BODY:
            return None
        try:
            return json.loads(content)
        except ValueError:
            return None

    def breaker_for(self, request: Any, body: Any) -> CircuitBreaker:
        """The breaker that guards ``request``."""
        spec = self.spec
        if isinstance(spec, CircuitBreaker):
            return spec
        if isinstance(spec, str):
            name = _fill(spec, request, body) if self.template else spec
        else:
            name = spec(request)
            if not isinstance(name, str) or not name:
                raise TypeError(f"breaker callable must return a non-empty str, got {name!r}")
        return self.registry.get_or_create_with(name, self.fields, config=self.config)

    def bound_first_byte(self, request: Any, body: Any) -> bool:
        """Shorten the read timeout of a streaming request to ``first_byte_timeout``; whether
        it streams."""
        streams = (isinstance(body, Mapping) and body.get("stream") is True) or (
            "text/event-stream" in request.headers.get("accept", "")
        )
        if streams and self.first_byte_timeout is not None:
            _set_read_timeout(request, self.first_byte_timeout)
        return streams

    # -- refusals ----------------------------------------------------------------------------

    def refused(self, request: Any, error: CircuitOpenError | ThrottledError) -> Any:
        """The answer to a refused attempt: nothing was sent, the SDK must not retry."""
        throttled = isinstance(error, ThrottledError)
        wait = error.retry_after
        headers = {
            "content-type": "application/json",
            "x-should-retry": "false",
            "x-llm-circuit-breaker": "throttled" if throttled else "circuit-open",
        }
        if wait is not None:
            headers["retry-after"] = str(max(0, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(0, math.ceil(wait * 1000)))
        kind = "throttled" if throttled else "circuit_open"
        body = {
            "error": {
                "message": f"{type(error).__name__}: {error}",
                "type": kind,
                "code": kind,
                "retry_after": wait,
            }
        }
        lib = _library(request)
        return lib.Response(
            429 if throttled else 503,
            headers=headers,
            content=json.dumps(body).encode(),
            request=request,
            extensions={REFUSAL: error},
        )

    # -- responses ---------------------------------------------------------------------------

    def judge_status(
        self, breaker: CircuitBreaker, request: Any, response: Any, body: bytes
    ) -> Any:
        """The verdict on an error status, and the error it stands for."""
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body[:2000].decode("utf-8", errors="replace")
        error = http_status_error(
            response.status_code, dict(response.headers), parsed, str(request.url)
        )
        return judge(error, breaker.config, name=breaker.name), error

    def after_headers(self, request: Any, response: Any, streams: bool) -> _Watch | None:
        """Once the headers are in: the read timeout of a stream's silences, and the watch of
        an SSE body."""
        if streams and self.idle_timeout is not None:
            _set_read_timeout(request, self.idle_timeout)
        if "text/event-stream" in response.headers.get("content-type", ""):
            return _Watch(str(request.url))
        return None


class _Watch:
    """Reads an SSE body as it passes: error frames, and whether the final event came."""

    __slots__ = ("_checker", "_decoder", "_lines")

    def __init__(self, url: str) -> None:
        from llm_circuit_breaker.http._sse import LineSplitter, SSEDecoder, StreamChecker

        limit = 8 * 1024 * 1024
        self._lines = LineSplitter(limit, url)
        self._decoder = SSEDecoder(limit, url)
        self._checker = StreamChecker(url)

    def feed(self, chunk: bytes) -> BaseException | None:
        """The first provider error in ``chunk``, if any."""
        for line in self._lines.feed(chunk):
            event = self._decoder.feed(line.decode("utf-8", errors="replace"))
            if event is not None:
                error = self._checker.error_in(event)
                if error is not None:
                    return error
        return None

    @property
    def complete(self) -> bool:
        """Whether the provider's final event has passed (the SDK may stop reading there)."""
        return self._checker.ended

    def truncated(self) -> bool:
        """At the end of the body: whether the provider's final event never came."""
        rest = self._lines.rest()
        if rest:
            self._decoder.feed(rest.decode("utf-8", errors="replace").rstrip("\r"))
        event = self._decoder.flush()
        if event is not None:
            self._checker.error_in(event)
        return self._checker.incomplete


class _Attempt:
    """One admitted attempt: reports its outcome exactly once."""

    __slots__ = ("breaker", "done", "permit")

    def __init__(self, breaker: CircuitBreaker, permit: int) -> None:
        self.breaker = breaker
        self.permit = permit
        self.done = False

    def verdict(self, exc: BaseException) -> Any:
        """What ``exc`` means for this attempt's breaker (None once reported)."""
        if self.done:
            return None
        self.done = True
        return judge(exc, self.breaker.config, name=self.breaker.name)

    def settle(self) -> bool:
        """Mark reported; whether it still had to be."""
        first = not self.done
        self.done = True
        return first


def _fill(template: str, request: Any, body: Any) -> str:
    values = dict(body) if isinstance(body, Mapping) else {}
    values.setdefault("host", request.url.host)
    try:
        return template.format_map(values)
    except KeyError as exc:
        raise TypeError(
            f"breaker name {template!r} needs {exc.args[0]!r}, which the request to "
            f"{request.url.host} does not carry (in its JSON body, or host)"
        ) from None


def _set_read_timeout(request: Any, seconds: float) -> None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        read = timeout.get("read")
        timeout["read"] = seconds if read is None else min(read, seconds)


def _library(message: Any) -> Any:
    """The module (``httpx``, ``httpx2``) whose Request / Response ``message`` is."""
    return sys.modules[type(message).__module__.partition(".")[0]]


@functools.cache
def _incomplete_type(lib: Any) -> type[IncompleteStreamError]:
    """IncompleteStreamError that is also ``lib``'s RemoteProtocolError: the error the SDKs
    handle (and wrap, where they wrap transport errors) as a broken body."""
    return type("IncompleteStreamError", (lib.RemoteProtocolError, IncompleteStreamError), {})


def _incomplete(request: Any) -> IncompleteStreamError:
    lib = _library(request)
    return _incomplete_type(lib)(  # type: ignore[call-arg]
        f"stream from {request.url.host} ended before its final event: the answer is cut short",
        request=request,
    )


# -- sync ----------------------------------------------------------------------------------


class _SyncBody:
    """A response body guarded to its end (mixed into the library's SyncByteStream)."""

    def __init__(self, inner: Any, attempt: _Attempt, watch: _Watch | None, request: Any):
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
                raise _incomplete(self._request)
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


def _record(attempt: _Attempt, exc: BaseException) -> None:
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
        self._core = _Core(breaker, registry, first_byte_timeout, idle_timeout, fields)
        self._inner = transport

    def _transport(self, request: Any) -> Any:
        if self._inner is None:  # the client's own library's transport, pooled
            self._inner = _library(request).HTTPTransport()
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
        token = TOKEN_COST.set(estimate_tokens(body))
        try:
            permit = breaker.admit()
        except (CircuitOpenError, ThrottledError) as refused:
            return core.refused(request, refused)
        finally:
            TOKEN_COST.reset(token)
        attempt = _Attempt(breaker, permit)
        streams = core.bound_first_byte(request, body)
        try:
            response = self._transport(request).handle_request(request)
        except BaseException as exc:
            _record(attempt, exc)
            raise
        breaker.observe(response.headers)
        if response.status_code >= 400:
            content = _read_capped(response)
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
        response.stream = _sync_body_type(_library(response))(
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


def _read_capped(response: Any) -> bytes:
    """An error response's body, read (so the SDK can read it too) up to a cap."""
    try:
        return bytes(response.read()[:_MAX_ERROR_BODY])
    except Exception:  # a body that breaks: judged by its status alone
        return b""


# -- async ---------------------------------------------------------------------------------


class _AsyncBody:
    """A response body guarded to its end (mixed into the library's AsyncByteStream)."""

    def __init__(self, inner: Any, attempt: _Attempt, watch: _Watch | None, request: Any):
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
                raise _incomplete(self._request)
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


async def _arecord(attempt: _Attempt, exc: BaseException) -> None:
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
        self._core = _Core(breaker, registry, first_byte_timeout, idle_timeout, fields)
        self._inner = transport

    def _transport(self, request: Any) -> Any:
        if self._inner is None:
            self._inner = _library(request).AsyncHTTPTransport()
        return self._inner

    async def handle_async_request(self, request: Any) -> Any:
        core = self._core
        body = core.body_of(request)
        breaker = core.breaker_for(request, body)
        token = TOKEN_COST.set(estimate_tokens(body))
        try:
            permit = await breaker.aadmit()
        except (CircuitOpenError, ThrottledError) as refused:
            return core.refused(request, refused)
        finally:
            TOKEN_COST.reset(token)
        attempt = _Attempt(breaker, permit)
        streams = core.bound_first_byte(request, body)
        try:
            response = await self._transport(request).handle_async_request(request)
        except BaseException as exc:
            await _arecord(attempt, exc)
            raise
        await breaker.aobserve(response.headers)
        if response.status_code >= 400:
            content = await _aread_capped(response)
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
        response.stream = _async_body_type(_library(response))(
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


async def _aread_capped(response: Any) -> bytes:
    try:
        return bytes((await response.aread())[:_MAX_ERROR_BODY])
    except Exception:
        return b""
