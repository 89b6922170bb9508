"""A fake LLM provider: a real aiohttp server on loopback, scripted reply by reply."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from llm_circuit_breaker.testing._reply import Reply, completion

__all__ = ["FakeLLMServer", "RecordedRequest"]


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """What the server received."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any


class FakeLLMServer:
    """A real HTTP server on 127.0.0.1 (random port) in a background thread.

    Replies come from the script (:meth:`script`), then from ``responder(n)`` (n counts
    requests from 0) when one is given, else ``default``. Every request is recorded.
    """

    def __init__(self, responder: Callable[[int], Reply] | None = None) -> None:
        self.responder = responder
        self.default = Reply.ok()
        self.requests: list[RecordedRequest] = []
        self._script: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The server's base URL, such as ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def hits(self) -> int:
        """How many requests reached the server."""
        return len(self.requests)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def _next(self, number: int) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self.responder(number) if self.responder is not None else self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        with self._lock:
            number = len(self.requests)
            self.requests.append(
                RecordedRequest(request.method, request.path, dict(request.headers), payload)
            )
        reply = self._next(number)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.events is not None:
            return await self._stream(request, reply)
        if reply.chunks is not None:
            return await self._raw(request, reply)
        body = (
            reply.text.encode()
            if reply.text is not None
            else json.dumps(reply.json if reply.json is not None else completion("Hello!")).encode()
        )
        content_type = "text/plain" if reply.text is not None else "application/json"
        if reply.drop:  # promise the whole body, send half, hang up
            response = web.StreamResponse(
                status=reply.status,
                headers={
                    **reply.headers,
                    "Content-Type": content_type,
                    "Content-Length": str(len(body)),
                },
            )
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            self._hang_up(request)
            return response
        return web.Response(
            status=reply.status, body=body, headers={**reply.headers, "Content-Type": content_type}
        )

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(
            status=reply.status, headers={**reply.headers, "Content-Type": "text/event-stream"}
        )
        await response.prepare(request)
        for frame in reply.events or ():
            await response.write(frame.encode())
            if reply.event_delay:
                await asyncio.sleep(reply.event_delay)
        if reply.drop:
            self._hang_up(request)
        else:
            await response.write_eof()
        return response

    async def _raw(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status, headers=dict(reply.headers))
        await response.prepare(request)
        try:
            for chunk in reply.chunks or ():
                await response.write(chunk)
        except (ConnectionError, RuntimeError):  # the client stopped reading: stop writing
            return response
        await response.write_eof()
        return response

    @staticmethod
    def _hang_up(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()

    # -- running ---------------------------------------------------------------------------

    async def astart(self) -> None:
        """Start serving in the running event loop."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def astop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> FakeLLMServer:
        """Serve from a background thread with its own event loop."""
        started = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.astart())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.astop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-llm-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake LLM server did not start within 10 s")
        return self

    def stop(self) -> None:
        """Stop the background server and wait for its thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeLLMServer:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()
