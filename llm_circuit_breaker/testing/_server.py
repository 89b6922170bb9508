"""A fake LLM provider: a real aiohttp server on loopback, scripted reply by reply."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["FakeLLMServer", "RecordedRequest", "Reply"]


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted answer. ``events`` makes it an SSE stream; ``drop`` cuts the connection
    after what was sent (half the body, or the events so far); ``delay`` waits before the
    status line (longer than the client's timeout: a read timeout)."""

    status: int = 200
    json: Any = None
    text: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    events: Sequence[str] | None = None
    event_delay: float = 0.0
    drop: bool = False
    chunks: Iterable[bytes] | None = None  # a raw body, written chunk by chunk (may be endless)

    @classmethod
    def ok(cls, text: str = "Hello!", **kwargs: Any) -> Reply:
        """A 200 OpenAI-style chat completion."""
        return cls(json=_completion(text), **kwargs)

    @classmethod
    def error(
        cls,
        status: int,
        error_type: str | None = None,
        message: str = "error",
        *,
        anthropic: bool = False,
        **kwargs: Any,
    ) -> Reply:
        """An error in the OpenAI (``{"error": {...}}``) or Anthropic envelope."""
        error_type = error_type or {429: "rate_limit_error", 529: "overloaded_error"}.get(
            status, "api_error"
        )
        inner = {"type": error_type, "message": message}
        if anthropic:
            body: dict[str, Any] = {"type": "error", "error": inner, "request_id": "req_fake"}
        else:
            body = {"error": {**inner, "code": error_type, "param": None}}
        return cls(status=status, json=body, **kwargs)

    @classmethod
    def openai_stream(
        cls, chunks: Sequence[str], *, error: str | None = None, done: bool = True, **kwargs: Any
    ) -> Reply:
        """Chat Completions SSE: content chunks, then an optional error frame, then [DONE]."""
        frames = [
            _sse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": c}}],
                }
            )
            for c in chunks
        ]
        if error is not None:
            frames.append(
                _sse(
                    {
                        "error": {
                            "message": "The server had an error",
                            "type": error,
                            "param": None,
                            "code": None,
                        }
                    }
                )
            )
        if done:
            frames.append(_sse("[DONE]"))
        return cls(events=frames, **kwargs)

    @classmethod
    def anthropic_stream(
        cls, texts: Sequence[str], *, error: str | None = None, finish: bool = True, **kwargs: Any
    ) -> Reply:
        """Messages SSE: message_start, deltas, a ping, an optional error event, message_stop."""
        frames = [
            _sse(
                {"type": "message_start", "message": {"id": "msg_fake", "content": []}},
                "message_start",
            )
        ]
        if texts:
            frames.append(_sse({"type": "ping"}, "ping"))
        frames += [
            _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
                "content_block_delta",
            )
            for t in texts
        ]
        if error is not None:
            frames.append(
                _sse({"type": "error", "error": {"type": error, "message": "Overloaded"}}, "error")
            )
        elif finish:
            frames.append(_sse({"type": "message_stop"}, "message_stop"))
        if not texts and error is not None:
            frames = frames[-1:]  # the error as the very first event
        return cls(events=frames, **kwargs)


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
            else json.dumps(
                reply.json if reply.json is not None else _completion("Hello!")
            ).encode()
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
