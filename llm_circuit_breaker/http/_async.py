"""The aiohttp driver: one lazily created ``aiohttp.ClientSession``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp

from llm_circuit_breaker.http._common import (
    EventReader,
    PreparedRequest,
    SSEEvent,
    local_error,
    parse_response,
    transport_error,
)

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

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owns_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._owns_session and (
            self._session is None or self._session.closed or self._loop is not loop
        ):
            # A session from a loop that has ended cannot be closed from this one: drop it.
            self._session, self._loop = aiohttp.ClientSession(), loop
        if self._session is None:  # pragma: no cover - a given session is never None
            raise RuntimeError("no client session")
        return self._session

    async def request(self, request: PreparedRequest) -> Any:
        """Send ``request``; the parsed JSON body, or our error."""
        timeout = aiohttp.ClientTimeout(total=request.timeout)
        with _translated(request):
            async with self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=timeout,
            ) as response:
                body = await response.read()
        return parse_response(response.status, response.headers, body, request.url)

    async def stream(self, request: PreparedRequest) -> AsyncIterator[SSEEvent]:
        """Send ``request`` and yield its server-sent events (the timeout is per read)."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=request.timeout, sock_read=request.timeout
        )
        with _translated(request):
            response = await self.session.request(
                request.method,
                request.url,
                headers={**request.headers, "Accept": "text/event-stream"},
                data=request.body,
                timeout=timeout,
            )
        async with response:
            if not 200 <= response.status < 300:
                with _translated(request):
                    body = await response.read()
                parse_response(response.status, response.headers, body, request.url)
            reader = EventReader(request.url)
            with _translated(request):
                async for raw in response.content:
                    event = reader.feed(raw)
                    if event is not None:
                        yield event
                    if reader.done:
                        return
                event = reader.flush()
                if event is not None:
                    yield event
            reader.finish()

    async def aclose(self) -> None:
        """Close the session if this transport made it."""
        if self._session is not None and self._owns_session:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
            self._session = self._loop = None
