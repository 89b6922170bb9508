"""A fake LLM provider: a real aiohttp server on loopback that speaks OpenAI (Chat
Completions, Responses) and Anthropic (Messages) well enough for the real SDKs, with scenario
switches (outage, rate limit, truncated streams, slow first token) and scripted replies."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from llm_circuit_breaker.testing._quota import Quota
from llm_circuit_breaker.testing._reply import Reply, completion, provider_error

__all__ = ["FakeLLMServer", "RecordedRequest"]


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """What the server received (``headers`` are case-insensitive)."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any


@dataclasses.dataclass(frozen=True)
class _Scenario:
    """How the server answers requests that no script, responder or default answers."""

    text: str = "Hello!"
    outage: int | None = None  # every request fails with this status
    quota: Quota | None = None  # a rate limit
    truncate: bool = False  # streams end before their final events ...
    hang_up: bool = False  # ... by dropping the connection rather than ending cleanly
    first_token_delay: float = 0.0


class FakeLLMServer:
    """A real HTTP server on 127.0.0.1 (random port): in a background thread (``with``,
    :meth:`start` / :meth:`stop`) or in the running event loop (``async with``).

    Point the real SDKs at it: ``openai.OpenAI(base_url=server.openai_base_url)``,
    ``anthropic.Anthropic(base_url=server.anthropic_base_url)``. It answers Chat Completions
    (``/v1/chat/completions``), Responses (``/v1/responses``) and Messages (``/v1/messages``),
    plain or streamed (``"stream": true``), echoing the requested model; any other path gets a
    chat completion.

    Each request is answered by the first of: the script (:meth:`script`), ``responder(n)``
    (n counts requests from 0), ``default`` when set, and the scenario (:meth:`healthy`,
    :meth:`outage`, :meth:`rate_limit`, :meth:`truncate_streams`, :meth:`slow_first_token`;
    the switches combine, :meth:`healthy` clears them). Every request is recorded in
    :attr:`requests`.
    """

    def __init__(self, responder: Callable[[int], Reply] | None = None) -> None:
        self.responder = responder
        self.default: Reply | None = None  # when set, answers every unscripted request
        self.requests: list[RecordedRequest] = []  # appended under a lock, in arrival order
        self._script: collections.deque[Reply] = collections.deque()
        self._scenario = _Scenario()
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
    def openai_base_url(self) -> str:
        """``base_url`` for the OpenAI SDK (the server's URL + ``/v1``)."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """``base_url`` for the Anthropic SDK (the server's URL; the SDK adds ``/v1``)."""
        return self.url

    @property
    def hits(self) -> int:
        """How many requests reached the server."""
        return len(self.requests)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order (before any scenario)."""
        with self._lock:
            self._script.extend(replies)

    # -- scenarios -------------------------------------------------------------------------

    def healthy(self, *, text: str = "Hello!") -> None:
        """Answer every request at once, in full, with ``text``: the other switches end."""
        with self._lock:
            self._scenario = _Scenario(text=text)

    def outage(self, status: int = 503) -> None:
        """Fail every request with ``status`` and the provider's error body: OpenAI's
        ``{"error": {...}}`` (503 ``server_is_overloaded``, 500 ``server_error``, ...) or
        Anthropic's ``{"type": "error", ...}`` (529 ``overloaded_error``, 500 ``api_error``,
        ...), streamed requests included (the error comes before the stream)."""
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"outage status must be an HTTP error status 400..599, got {status!r}")
        self._switch(outage=status)

    def rate_limit(
        self, requests_per_minute: int = 60, *, clock: Callable[[], float] | None = None
    ) -> None:
        """Enforce ``requests_per_minute`` (a refilling bucket, :class:`Quota`): every answer
        carries the rate-limit headers (``x-ratelimit-*-requests``, or Anthropic's
        ``anthropic-ratelimit-requests-*``), and a request over the limit gets a 429 with
        ``retry-after`` (and OpenAI's ``retry-after-ms``) saying the real wait."""
        quota = Quota(requests_per_minute, 60.0, **({} if clock is None else {"clock": clock}))
        self._switch(quota=quota)

    def truncate_streams(self, *, hang_up: bool = False) -> None:
        """End every streamed answer after its content, before its final events (no finish
        reason nor ``[DONE]``, no ``message_stop``, no ``response.completed``): cleanly, as a
        proxy that closes the stream early, or with ``hang_up=True`` by dropping the
        connection mid-body."""
        self._switch(truncate=True, hang_up=hang_up)

    def slow_first_token(self, seconds: float) -> None:
        """Wait ``seconds`` before the first content: a stream sends its headers and opening
        events at once, then waits; a plain answer waits before its status line."""
        if isinstance(seconds, bool) or not (
            isinstance(seconds, int | float) and 0 <= seconds < math.inf
        ):
            raise ValueError(f"slow_first_token needs finite seconds >= 0, got {seconds!r}")
        self._switch(first_token_delay=float(seconds))

    def _switch(self, **changes: Any) -> None:
        with self._lock:
            self._scenario = dataclasses.replace(self._scenario, **changes)

    def _next(self, number: int, path: str = "/", body: Any = None) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
            scenario = self._scenario
        if self.responder is not None:
            return self.responder(number)
        if self.default is not None:
            return self.default
        return _answer(scenario, path, body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        with self._lock:
            number = len(self.requests)
            self.requests.append(
                RecordedRequest(request.method, request.path, CIMultiDict(request.headers), payload)
            )
        reply = self._next(number, request.path, payload)
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
        for index, frame in enumerate(reply.events or ()):
            if index == reply.first_content and reply.first_token_delay:
                await asyncio.sleep(reply.first_token_delay)
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


def _answer(scenario: _Scenario, path: str, body: Any) -> Reply:
    """The scenario's answer to a request for ``path`` with the JSON ``body``."""
    anthropic = path.rstrip("/").endswith("/messages")
    if scenario.outage is not None:
        return provider_error(scenario.outage, anthropic=anthropic)
    fields = body if isinstance(body, dict) else {}
    model = fields.get("model")
    model = model if isinstance(model, str) else "fake-model"
    stream = fields.get("stream") is True
    if anthropic:
        build = Reply.messages
    elif path.rstrip("/").endswith("/responses"):
        build = Reply.responses
    else:
        build = Reply.chat
    reply = build(scenario.text, model=model, stream=stream, cut=stream and scenario.truncate)
    if stream:
        reply = dataclasses.replace(
            reply,
            drop=scenario.truncate and scenario.hang_up,
            first_token_delay=scenario.first_token_delay,
        )
    elif scenario.first_token_delay:
        reply = dataclasses.replace(reply, delay=scenario.first_token_delay)
    if scenario.quota is not None:
        reply = scenario.quota.reply(reply, anthropic=anthropic)
    return reply
