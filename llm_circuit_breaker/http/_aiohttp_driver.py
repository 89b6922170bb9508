"""The aiohttp driver: one lazily created ``aiohttp.ClientSession``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import aiohttp

from llm_circuit_breaker._judge.local import is_local
from llm_circuit_breaker.errors import RequestTimeoutError
from llm_circuit_breaker.http._common import (
    BodyLimit,
    PreparedRequest,
    first_content,
    is_sse,
    local_error,
    parse_response,
    redirect,
    transport_error,
)
from llm_circuit_breaker.http._sse import (
    EventReader,
    SSEEvent,
    is_json,
    judge_whole,
    parse_answer,
    whole_answer,
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
        if is_local(exc):  # "Connector is closed": a session closed under this call
            raise local_error(exc)
        raise transport_error(request, exc, timed_out=False) from exc
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise local_error(exc)


class AsyncTransport:
    """Sends prepared requests through a ``ClientSession`` made in the running event loop: one
    per loop, so threads each running their own loop (``asyncio.run(cb.acall(...))`` in a thread
    pool) share one facade, and a loop's session is never closed from another loop."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._given = session
        # Weakly keyed on the loop. A session refers to its loop, so those of ended loops are
        # let go explicitly (_sweep), not by the collector.
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Session] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    async def session(self) -> aiohttp.ClientSession:
        """The running event loop's session (made on first use)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        made = self._sessions.get(loop)
        if made is None or made.session.closed:
            made = _Session(aiohttp.ClientSession())
            with self._lock:
                ended = self._sweep()
                self._sessions[loop] = made
            await made.closer.__anext__()  # closes the session when asyncio.run ends the loop
            for stale in ended:
                _discard(stale.session)
        return made.session

    def sessions(self) -> list[aiohttp.ClientSession]:
        """The sessions this transport holds, one per live event loop (those of ended loops
        are let go first)."""
        with self._lock:
            ended = self._sweep()
            live = [made.session for made in self._sessions.values()]
        for stale in ended:
            _discard(stale.session)
        return live

    def _sweep(self) -> list[_Session]:
        """Take out the sessions whose event loop has ended (under the lock)."""
        ended = [loop for loop in self._sessions if loop.is_closed()]
        return [self._sessions.pop(loop) for loop in ended]

    async def _open(
        self, request: PreparedRequest, timeout: aiohttp.ClientTimeout, accept: str | None = None
    ) -> aiohttp.ClientResponse:
        """Send ``request``, following same-origin redirects only (inside ``_translated``)."""
        for hops in range(1_000):
            headers = dict(request.headers)
            if accept is not None:
                headers["Accept"] = accept
            response = await (await self.session()).request(
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
        first = first_content(request)
        try:
            with _translated(request):
                opening = self._open(request, timeout)
                if first is not None:
                    opening = asyncio.wait_for(opening, max(0.0, first.left()))
                async with await opening as response:
                    if first is not None and not is_sse(response.headers):
                        first = None  # not a stream: read as any body
                    limit = BodyLimit(request)
                    chunks = response.content.iter_chunked(65536).__aiter__()
                    while True:
                        reading = chunks.__anext__()
                        if first is not None and not first.seen:
                            reading = asyncio.wait_for(reading, max(0.0, first.left()))
                        try:
                            chunk = await reading
                        except StopAsyncIteration:
                            break
                        limit.add(chunk)
                        if first is not None:
                            first.feed(chunk)
        except RequestTimeoutError as exc:
            late = first.late(exc, request) if first is not None else None
            if late is None:
                raise
            raise late from exc
        return parse_answer(request, response.status, response.headers, limit.body())

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
            if is_json(response.headers):  # a server that answered whole, not as a stream
                limit = BodyLimit(request)
                with _translated(request):
                    async for chunk in response.content.iter_chunked(65536):
                        limit.add(chunk)
                whole = whole_answer(request, limit.body())
                for event in whole:
                    yield event
                judge_whole(whole)  # a non-answer: the breaker ignores it
                return
            reader = EventReader(request)
            with _translated(request):
                async for chunk in response.content.iter_any():
                    for event in reader.feed(chunk):
                        yield event
                    if reader.done:
                        break
                else:
                    last = reader.flush()
                    if last is not None:
                        yield last
            reader.finish()
            reader.judge()  # a non-answer: the breaker ignores it

    async def aclose(self) -> None:
        """Close the running event loop's session if this transport made it (and let go of
        those of ended loops)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            made = self._sessions.pop(loop, None)
            ended = self._sweep()
        for stale in ended:
            _discard(stale.session)
        if made is not None:
            await made.closer.aclose()

    def discard(self) -> None:
        """Close every session this transport made, as far as sync code can (``close()``): those
        of ended or idle loops at once, those of loops running in other threads in their own."""
        with self._lock:
            taken = list(self._sessions.items())
            self._sessions.clear()
        for loop, made in taken:
            if loop.is_running() and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # that loop has just been closed
                    loop.call_soon_threadsafe(_discard, made.session)
                    continue
            _discard(made.session)


class _Session:
    """A loop's session and the async generator that closes it in that loop: asyncio.run()
    closes a loop's async generators before the loop (``shutdown_asyncgens``), so
    ``asyncio.run(cb.acall(...))`` leaves no connection open behind it."""

    __slots__ = ("closer", "session")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.closer = _closing(session)


async def _closing(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if not session.closed:
            await session.close()


def _discard(session: aiohttp.ClientSession) -> None:
    """Let go of a session that cannot be awaited from here: its connector is closed
    synchronously (a no-op once its loop is closed: nothing is left to leak)."""
    if session.closed:
        return
    connector = session.connector
    close_now = getattr(connector, "_close", None)
    if close_now is not None:
        close_now()
    session.detach()
