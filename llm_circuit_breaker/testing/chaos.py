"""``ChaosTransport``: an httpx transport that injects provider faults at given rates, for
chaos drills in staging. Nothing in the library installs it: it is on only where a team puts
it, under :class:`~llm_circuit_breaker.httpx.CircuitBreakerTransport`::

    chaos = ChaosTransport(seed=7, status_529=0.05, timeout=0.02, truncate=0.02)
    client = openai.OpenAI(http_client=httpx.Client(transport=CircuitBreakerTransport(
        "openai", chaos)))
"""

from __future__ import annotations

import asyncio
import collections
import difflib
import functools
import json
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

from llm_circuit_breaker.httpx._core import library
from llm_circuit_breaker.testing._reply import provider_error

__all__ = ["ChaosTransport"]

# The faults a request may get, at most one each; drawn in this order from one number.
FAULTS = ("status_500", "status_529", "status_429", "timeout", "disconnect", "truncate")
_RATES = (*FAULTS, "slow_first_token")
RETRY_AFTER = 1  # seconds, what an injected 429 asks for
_STATUS = {"status_500": 500, "status_529": 529, "status_429": 429}
# Frames that start the end of a stream: a finish reason and [DONE] (OpenAI chat), the end of
# the text (Responses), content_block_stop .. message_stop (Anthropic).
_FINAL_MARKERS = (
    b"[DONE]",
    b'"finish_reason":"',
    b'"finish_reason": "',
    b"content_block_stop",
    b"message_delta",
    b"message_stop",
    b"response.output_text.done",
    b"response.completed",
    b"response.incomplete",
)


class ChaosTransport:
    """An httpx (or httpx2) transport, sync and async, that injects faults at given rates.

    Each request gets at most one of these faults, each with its own rate (the rates add up
    to at most 1):

    * ``status_500``, ``status_529``, ``status_429``: answered without reaching the provider,
      with that provider's error body (Anthropic's for ``/messages`` requests, else OpenAI's)
      and, for 429, ``retry-after: 1``;
    * ``timeout``: ``ReadTimeout``; ``disconnect``: ``RemoteProtocolError`` (server
      disconnected), both without reaching the provider;
    * ``truncate``: the real answer cut part-way: a stream ends cleanly before its final
      events (no finish reason, ``[DONE]``, ``message_stop`` or ``response.completed``: the
      half answer a bare SDK returns without a word), another body stops half-way with
      ``RemoteProtocolError``.

    Independently, ``slow_first_token=(rate, seconds)`` holds the first bytes of a real
    answer's body for ``seconds`` (a ``ReadTimeout`` when that exceeds the request's read
    timeout). Injected answers carry an ``x-chaos`` header naming their fault; errors say
    they were injected.

    ``inner`` is the transport that makes real requests (by default the HTTP transport of
    the request's library, ``httpx`` or ``httpx2``, made on first use). The same ``seed``
    gives the same faults to the same sequence of requests. :attr:`injected` counts the
    faults injected so far, :attr:`handled` the requests.
    """

    def __init__(
        self,
        inner: Any = None,
        *,
        seed: int | str | None = None,
        status_500: float = 0.0,
        status_529: float = 0.0,
        status_429: float = 0.0,
        timeout: float = 0.0,
        disconnect: float = 0.0,
        truncate: float = 0.0,
        slow_first_token: tuple[float, float] = (0.0, 0.0),
        **unknown: Any,
    ) -> None:
        if unknown:
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, _RATES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"ChaosTransport() got an unknown rate {name!r}{hint} (rates: {', '.join(_RATES)})"
            )
        rates = {
            "status_500": status_500,
            "status_529": status_529,
            "status_429": status_429,
            "timeout": timeout,
            "disconnect": disconnect,
            "truncate": truncate,
        }
        for name, rate in rates.items():
            _check_rate(name, rate)
        total = math.fsum(rates.values())
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"ChaosTransport rates add up to {total:g}: a request gets at most one fault, "
                f"so they must add up to at most 1"
            )
        self._slow_rate, self._slow_seconds = _check_slow(slow_first_token)
        self._rates = {name: float(rate) for name, rate in rates.items()}
        self._bands: list[tuple[float, str]] = []
        bound = 0.0
        for name, rate in rates.items():
            if rate:
                bound += rate
                self._bands.append((bound, name))
        self._seed = seed
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._injected: collections.Counter[str] = collections.Counter()
        self._handled = 0
        self._inner = inner
        self._sync_inner = inner
        self._async_inner = inner

    @property
    def injected(self) -> dict[str, int]:
        """How many times each fault was injected so far (``slow_first_token`` included)."""
        with self._lock:
            return dict(self._injected)

    @property
    def handled(self) -> int:
        """How many requests passed through."""
        return self._handled

    def _draw(self) -> tuple[str | None, bool]:
        """The next request's fault (or None) and whether its first token is slow."""
        with self._lock:
            self._handled += 1
            fault_draw, slow_draw = self._random.random(), self._random.random()
            fault = next((name for bound, name in self._bands if fault_draw < bound), None)
            slow = slow_draw < self._slow_rate and fault in (None, "truncate")
            if fault is not None:
                self._injected[fault] += 1
            if slow:
                self._injected["slow_first_token"] += 1
        return fault, slow

    def _before(self, lib: Any, request: Any, fault: str | None) -> Any:
        """The answer to a fault that keeps the request from the provider, if it is one."""
        if fault in _STATUS:
            return _status_response(lib, request, _STATUS[fault], fault)
        if fault == "timeout":
            raise lib.ReadTimeout("read timed out (injected by ChaosTransport)", request=request)
        if fault == "disconnect":
            raise lib.RemoteProtocolError(
                "Server disconnected without sending a response (injected by ChaosTransport).",
                request=request,
            )
        return None

    def _after(
        self, lib: Any, request: Any, response: Any, body: Any, fault: str | None, slow: bool
    ) -> Any:
        if fault == "truncate" or slow:
            response.stream = body(lib)(
                response.stream,
                request,
                lib,
                cut=fault == "truncate",
                delay=self._slow_seconds if slow else 0.0,
                sse="text/event-stream" in response.headers.get("content-type", ""),
            )
        return response

    # -- sync ------------------------------------------------------------------------------

    def handle_request(self, request: Any) -> Any:
        """Send ``request`` through the inner transport, or answer it with a fault."""
        lib = library(request)
        fault, slow = self._draw()
        early = self._before(lib, request, fault)
        if early is not None:
            return early
        if self._sync_inner is None:
            with self._lock:
                if self._sync_inner is None:
                    self._sync_inner = lib.HTTPTransport()
        response = self._sync_inner.handle_request(request)
        return self._after(lib, request, response, _sync_body, fault, slow)

    def close(self) -> None:
        """Close the inner transport."""
        if self._sync_inner is not None and hasattr(self._sync_inner, "close"):
            self._sync_inner.close()

    def __enter__(self) -> ChaosTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- async -----------------------------------------------------------------------------

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request`` through the inner transport, or answer it with a fault."""
        lib = library(request)
        fault, slow = self._draw()
        early = self._before(lib, request, fault)
        if early is not None:
            return early
        if self._async_inner is None:
            self._async_inner = lib.AsyncHTTPTransport()
        response = await self._async_inner.handle_async_request(request)
        return self._after(lib, request, response, _async_body, fault, slow)

    async def aclose(self) -> None:
        """Close the inner transport."""
        if self._async_inner is not None and hasattr(self._async_inner, "aclose"):
            await self._async_inner.aclose()

    async def __aenter__(self) -> ChaosTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        rates = [f"{name}={rate!r}" for name, rate in self._rates.items() if rate]
        if self._slow_rate:
            rates.append(f"slow_first_token=({self._slow_rate!r}, {self._slow_seconds!r})")
        return f"ChaosTransport(seed={self._seed!r}{''.join(', ' + r for r in rates)})"


def _check_rate(name: str, rate: object) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"ChaosTransport {name} must be a rate in [0, 1], got {rate!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"ChaosTransport {name} must be a rate in [0, 1], got {rate!r}")


def _check_slow(value: object) -> tuple[float, float]:
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise TypeError(
            f"ChaosTransport slow_first_token must be a pair (rate, seconds), got {value!r}"
        )
    rate, seconds = value
    _check_rate("slow_first_token rate", rate)
    if isinstance(seconds, bool) or not (
        isinstance(seconds, int | float) and 0.0 <= seconds < math.inf
    ):
        raise ValueError(
            f"ChaosTransport slow_first_token seconds must be finite and >= 0, got {seconds!r}"
        )
    return float(rate), float(seconds)


def _anthropic(request: Any) -> bool:
    return request.url.path.rstrip("/").endswith("/messages") or (
        "anthropic-version" in request.headers
    )


def _status_response(lib: Any, request: Any, status: int, fault: str) -> Any:
    """The provider's error answer for ``status``, as if the provider had sent it."""
    anthropic = _anthropic(request)
    headers = {"x-chaos": fault}
    if status == 429:
        headers["retry-after"] = str(RETRY_AFTER)
        if not anthropic:
            headers["retry-after-ms"] = str(RETRY_AFTER * 1000)
    reply = provider_error(status, anthropic=anthropic, headers=headers)
    return lib.Response(
        status,
        headers={**reply.headers, "content-type": "application/json"},
        content=json.dumps(reply.json).encode(),
        request=request,
    )


class _Cut:
    """Passes an SSE body frame by frame until the first frame that starts its end."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """What to pass on of ``chunk``: the whole frames before the end (``done`` then)."""
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        frames = []
        while not self.done:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            frame, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            if any(marker in frame for marker in _FINAL_MARKERS):
                self.done = True
            else:
                frames.append(frame)
        return b"".join(frames)

    def rest(self) -> bytes:
        """What is left at the end of a body that never reached its end."""
        rest, self._buffer = self._buffer, b""
        return b"" if self.done else rest


class _Body:
    """A real answer's body, held back at first (slow first token) or cut (truncate)."""

    def __init__(
        self, inner: Any, request: Any, lib: Any, *, cut: bool, delay: float, sse: bool
    ) -> None:
        self._inner = inner
        self._request = request
        self._lib = lib
        self._cut = cut
        self._delay = delay
        self._sse = sse

    def _first_wait(self) -> tuple[float, bool]:
        """How long to hold the first bytes, and whether the read times out meanwhile (the
        read timeout is read now: the transports above may set it after the headers)."""
        timeouts = self._request.extensions.get("timeout") or {}
        read = timeouts.get("read")
        if read is not None and self._delay > read:
            return float(read), True
        return self._delay, False

    def _timed_out(self) -> BaseException:
        error: BaseException = self._lib.ReadTimeout(
            f"no first token within the read timeout (held {self._delay:g} s by ChaosTransport)",
            request=self._request,
        )
        return error

    def _broken(self) -> BaseException:
        error: BaseException = self._lib.RemoteProtocolError(
            "peer closed connection without sending complete message body "
            "(truncated by ChaosTransport)",
            request=self._request,
        )
        return error


class _SyncBody(_Body):
    def __iter__(self) -> Iterator[bytes]:
        if self._delay:
            wait, timed_out = self._first_wait()
            time.sleep(wait)
            if timed_out:
                raise self._timed_out()
        if not self._cut:
            yield from self._inner
        elif self._sse:
            cut = _Cut()
            for chunk in self._inner:
                passed = cut.feed(chunk)
                if passed:
                    yield passed
                if cut.done:
                    return
            rest = cut.rest()
            if rest:
                yield rest
        else:
            body = b"".join(self._inner)
            yield body[: len(body) // 2]
            raise self._broken()

    def close(self) -> None:
        self._inner.close()


class _AsyncBody(_Body):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._delay:
            wait, timed_out = self._first_wait()
            await _async_sleep(wait)
            if timed_out:
                raise self._timed_out()
        if not self._cut:
            async for chunk in self._inner:
                yield chunk
        elif self._sse:
            cut = _Cut()
            async for chunk in self._inner:
                passed = cut.feed(chunk)
                if passed:
                    yield passed
                if cut.done:
                    return
            rest = cut.rest()
            if rest:
                yield rest
        else:
            body = b"".join([chunk async for chunk in self._inner])
            yield body[: len(body) // 2]
            raise self._broken()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _async_sleep(seconds: float) -> None:
    try:
        import anyio  # what httpx runs on: asyncio or trio
    except ImportError:  # pragma: no cover - httpx depends on anyio
        await asyncio.sleep(seconds)
    else:
        await anyio.sleep(seconds)


@functools.cache
def _sync_body(lib: Any) -> Callable[..., _SyncBody]:
    return type("ChaosBody", (_SyncBody, lib.SyncByteStream), {})


@functools.cache
def _async_body(lib: Any) -> Callable[..., _AsyncBody]:
    return type("AsyncChaosBody", (_AsyncBody, lib.AsyncByteStream), {})
