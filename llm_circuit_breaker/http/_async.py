"""The aiohttp driver: one lazily created ``aiohttp.ClientSession``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp

from llm_circuit_breaker.errors import RequestTimeoutError, TransportError
from llm_circuit_breaker.http._common import (
    DONE,
    PreparedRequest,
    SSEDecoder,
    SSEEvent,
    StreamChecker,
    parse_response,
)

__all__ = ["AsyncTransport"]


@contextlib.contextmanager
def _translated(request: PreparedRequest) -> Iterator[None]:
    """aiohttp's timeouts and client errors as ours, the original kept as __cause__."""
    try:
        yield
    except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError on 3.11+
        raise RequestTimeoutError(
            f"{request.method} timed out after {request.timeout:g}s", url=request.url
        ) from exc
    except aiohttp.ClientError as exc:
        raise TransportError(
            f"{request.method} failed: {type(exc).__name__}: {exc}", url=request.url
        ) from exc


class AsyncTransport:
    """Sends prepared requests through one ``ClientSession`` (made inside the running loop)."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owns_session = session is None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
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
            decoder, checker = SSEDecoder(), StreamChecker(request.url)
            with _translated(request):
                async for raw in response.content:
                    event = decoder.feed(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                    if event is not None and checker.check(event):
                        yield event
                    if event is DONE:
                        return
                event = decoder.flush()
                if event is not None and checker.check(event):
                    yield event
            checker.finish()

    async def aclose(self) -> None:
        """Close the session if this transport made it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None
