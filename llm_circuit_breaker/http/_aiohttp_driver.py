"""The aiohttp driver: one lazily created ``aiohttp.ClientSession``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp

from llm_circuit_breaker.http._common import (
    BodyLimit,
    PreparedRequest,
    local_error,
    parse_response,
    redirect,
    transport_error,
)
from llm_circuit_breaker.http._sse import EventReader, SSEEvent

__all__ = ["AsyncTransport"]


@contextlib.contextmanager
def _translated(request: PreparedRequest) -> Iterator[None]:
    """aiohttp's timeouts and client errors as ours, the original kept as __cause__."""
    try:
        yield
    except (TimeoutError, asyncio.TimeoutError) as exc:  # one class on 3.11+, two on 3.10
        raise transport_error(request, exc, timed_out=True) from exc
    except aiohttp.ClientError as exc:
        raise transport_error(request, exc, timed_out=False) from exc
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise local_error(exc)


class AsyncTransport:
    """Sends prepared requests through a ``ClientSession`` made in the running event loop: one
    per loop, so ``asyncio.run(cb.acall(...))`` called again and again keeps working."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._owns_session and (
            self._session is None or self._session.closed or self._loop is not loop
        ):
            self._discard()
            self._session, self._loop = aiohttp.ClientSession(), loop
        if self._session is None:  # pragma: no cover - a given session is never None
            raise RuntimeError("no client session")
        return self._session

    async def _open(
        self, request: PreparedRequest, timeout: aiohttp.ClientTimeout, accept: str | None = None
    ) -> aiohttp.ClientResponse:
        """Send ``request``, following same-origin redirects only (inside ``_translated``)."""
        for hops in range(1_000):
            headers = dict(request.headers)
            if accept is not None:
                headers["Accept"] = accept
            response = await self.session.request(
                request.method,
                request.url,
                headers=headers,
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
            )
            following = redirect(request, response.status, response.headers, hops)
            if following is None:
                if request.observe is not None:  # the breaker's throttle hears every answer
                    await request.observe(response.headers)
                return response
            response.release()
            request = following
        raise AssertionError("unreachable: redirect() stops at MAX_REDIRECTS")  # pragma: no cover

    async def request(self, request: PreparedRequest) -> Any:
        """Send ``request``; the parsed JSON body, or our error."""
        timeout = aiohttp.ClientTimeout(total=request.timeout)
        with _translated(request):
            async with await self._open(request, timeout) as response:
                limit = BodyLimit(request)
                async for chunk in response.content.iter_chunked(65536):
                    limit.add(chunk)
        return parse_response(response.status, response.headers, limit.body(), request.url)

    async def stream(self, request: PreparedRequest) -> AsyncIterator[SSEEvent]:
        """Send ``request`` and yield its server-sent events (the timeout is per read)."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=request.timeout, sock_read=request.timeout
        )
        with _translated(request):
            response = await self._open(request, timeout, accept="text/event-stream")
        async with response:
            if not 200 <= response.status < 300:
                limit = BodyLimit(request)
                with _translated(request):
                    async for chunk in response.content.iter_chunked(65536):
                        limit.add(chunk)
                parse_response(response.status, response.headers, limit.body(), request.url)
            reader = EventReader(request)
            with _translated(request):
                async for chunk in response.content.iter_any():
                    for event in reader.feed(chunk):
                        yield event
                    if reader.done:
                        return
                last = reader.flush()
                if last is not None:
                    yield last
            reader.finish()

    async def aclose(self) -> None:
        """Close the session if this transport made it."""
        if self._session is not None and self._owns_session:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
            else:
                self._discard()
            self._session = self._loop = None

    def discard(self) -> None:
        """Let go of the session of an event loop that has ended (``close()`` from sync code)."""
        if self._loop is not None and self._loop.is_closed():
            self._discard()
            self._session = self._loop = None

    def _discard(self) -> None:
        """Let go of a session made in an event loop that has ended: it cannot be awaited from
        this one, so its connector is closed synchronously (nothing is left to leak)."""
        session = self._session
        if session is None or session.closed or not self._owns_session:
            return
        connector = session.connector
        close_now = getattr(connector, "_close", None)  # sync; a no-op once its loop is closed
        if close_now is not None:
            close_now()
        session.detach()
