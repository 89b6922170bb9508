"""Hostile HTTP exchanges meet the drivers and the httpx transport: bounded reads, bounded
time, encoded streams watched like plain ones."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import socketserver
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    IncompleteStreamError,
    LLMCircuitBreaker,
    RequestTimeoutError,
    TransportError,
)
from llm_circuit_breaker.http._common import prepare
from llm_circuit_breaker.http._sse import EventReader
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

MiB = 1024 * 1024
URL = "https://api.example.test/v1/chat/completions"


def _frame(data: Any) -> bytes:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n".encode()


def _chunk(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


WHOLE = _frame(_chunk("Hel")) + _frame(_chunk("lo")) + _frame("[DONE]")
NO_DONE = _frame(_chunk("Hel")) + _frame(_chunk("lo"))
ERROR = (
    _frame(_chunk("Hel"))
    + _frame({"error": {"type": "server_error", "message": "boom"}})
    + _frame("[DONE]")
)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw deflate": _raw_deflate,
}


def _sse_client(
    body: bytes, encoding: str, registry: BreakerRegistry, piece: int = 7
) -> httpx.Client:
    """A client whose transport wraps a mock server answering ``body`` with ``encoding``,
    written in small pieces."""

    def handler(request: httpx.Request) -> httpx.Response:
        pieces = (body[i : i + piece] for i in range(0, len(body), piece))
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream", "content-encoding": encoding},
            content=iter(list(pieces)),
        )

    transport = CircuitBreakerTransport("sse", httpx.MockTransport(handler), registry=registry)
    return httpx.Client(transport=transport)


def _read(client: httpx.Client) -> list[str]:
    with client.stream("POST", URL, json={"stream": True}) as response:
        return list(response.iter_lines())


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_an_encoded_stream_is_watched_like_a_plain_one(encoding: str) -> None:
    """gzip / deflate SSE: a whole stream succeeds, an error frame fails, a truncated one raises."""
    compress = ENCODINGS[encoding]
    header = encoding.split()[-1]
    registry = BreakerRegistry()
    with _sse_client(compress(WHOLE), header, registry) as client:
        lines = _read(client)
    assert 'data: {"object": "chat.completion.chunk"' in lines[0]
    assert registry.get("sse").stats.successes == 1

    with _sse_client(compress(ERROR), header, registry) as client:
        _read(client)
    assert registry.get("sse").stats.failures == 1

    with (
        _sse_client(compress(NO_DONE), header, registry) as client,
        pytest.raises(IncompleteStreamError),
    ):
        _read(client)
    assert registry.get("sse").stats.failures == 2


def test_a_gzip_stream_cut_inside_its_compressed_data_is_truncated() -> None:
    """A gzip body that stops before its end (whatever SSE it held so far) is cut short."""
    registry = BreakerRegistry()
    compressed = gzip.compress(WHOLE * 50)
    with (
        _sse_client(compressed[: len(compressed) - 12], "gzip", registry) as client,
        pytest.raises(IncompleteStreamError),
    ):
        _read(client)
    assert registry.get("sse").stats.failures == 1


def test_a_gzip_bomb_in_a_stream_is_cut_at_the_event_limit() -> None:
    """64 KB of gzip holding 64 MiB without a line break fails at the event limit, memory bounded."""
    import tracemalloc

    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    block = b"\0" * MiB
    bomb = b"".join(compressor.compress(block) for _ in range(64)) + compressor.flush()
    registry = BreakerRegistry()
    tracemalloc.start()
    try:
        with (
            _sse_client(bomb, "gzip", registry, piece=64 * 1024) as client,
            pytest.raises(TransportError, match="max_event_bytes"),
        ):
            _read(client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB
    assert registry.get("sse").stats.failures == 1


# -- error bodies ----------------------------------------------------------------------------


def _gzip_bomb(mib: int) -> bytes:
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    block = b"\0" * MiB
    return b"".join(compressor.compress(block) for _ in range(mib)) + compressor.flush()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_endless_error_body_is_read_only_as_far_as_judging_needs(
    llm_server: FakeLLMServer, asynchronous: bool
) -> None:
    """A 500 whose body never ends returns at once, judged, with a bounded body for the SDK."""
    llm_server.default = Reply(status=500, chunks=itertools.repeat(b'{"error": "x' * 4096))
    registry = BreakerRegistry()

    if asynchronous:

        async def send() -> tuple[int, bytes]:
            transport = AsyncCircuitBreakerTransport("errors", registry=registry)
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.post(llm_server.url + "/v1/chat/completions", json={})
                return response.status_code, await response.aread()

        status, content = asyncio.run(send())
    else:
        transport = CircuitBreakerTransport("errors", registry=registry)
        with httpx.Client(transport=transport) as client:
            response = client.post(llm_server.url + "/v1/chat/completions", json={})
            status, content = response.status_code, response.read()
    assert status == 500
    assert 0 < len(content) <= 256 * 1024 + 64 * 1024
    assert registry.get("errors").stats.failures == 1


def test_a_gzip_bomb_error_body_is_decoded_only_as_far_as_judging_needs(
    llm_server: FakeLLMServer,
) -> None:
    """A 429 whose gzip body inflates to 256 MiB is judged on its first 256 KiB, memory bounded."""
    import tracemalloc

    bomb = _gzip_bomb(256)
    llm_server.default = Reply(
        status=429,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        chunks=[bomb[i : i + 65536] for i in range(0, len(bomb), 65536)],
    )
    registry = BreakerRegistry()
    tracemalloc.start()
    try:
        with httpx.Client(transport=CircuitBreakerTransport("bomb", registry=registry)) as client:
            response = client.post(llm_server.url + "/v1/chat/completions", json={})
            content = response.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 429
    assert len(content) <= 256 * 1024 + 64 * 1024
    assert peak < 32 * MiB
    stats = registry.get("bomb").stats
    assert (stats.throttled, stats.failures) == (1, 0)


# -- bounded time: totals and keep-alives ------------------------------------------------------


class _RawServer:
    """A loopback HTTP/1.1 server answering every request with ``respond(send, stop)``: raw
    bytes and pauses, for what a scripted aiohttp server cannot do (trickle, ping forever)."""

    def __init__(self, respond: Callable[[Callable[[bytes], None], threading.Event], None]):
        self.stop = threading.Event()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.rfile.read(length)
                with contextlib.suppress(OSError):
                    respond(self._send, outer.stop)

            def _send(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/chat/completions"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _trickle(send: Callable[[bytes], None], stop: threading.Event) -> None:
    """A JSON body promised 40 bytes long, sent one byte every 0.2 s (8 s in all)."""
    send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n")
    for _ in range(40):
        if stop.wait(0.2):
            return
        send(b" ")


def _pings(send: Callable[[bytes], None], stop: threading.Event) -> None:
    """An Anthropic stream that opens, then sends only pings and comments, forever."""
    send(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    frames = [b'event: ping\ndata: {"type": "ping"}\n\n', b": keep-alive\n\n"]
    for frame in itertools.cycle(frames):
        if stop.wait(0.1):
            return
        send(b"%x\r\n%s\r\n" % (len(frame), frame))


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_the_timeout_of_a_call_is_a_total(driver: str) -> None:
    """A server sending one byte every 0.2 s cannot keep a call with timeout=1 alive."""
    with _RawServer(_trickle) as server:
        cb = LLMCircuitBreaker(retry={"max_retries": 0}, circuit_breaker={"timeout": 1.0})
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            if driver == "sync":
                cb.call(server.url, data={})
            else:
                asyncio.run(_acall(cb, server.url))
        elapsed = time.monotonic() - started
        cb.close()
    assert elapsed < 4.0  # one second, and generous room; reading on took 8 s
    assert cb.breaker.stats.failures == 1


async def _acall(cb: LLMCircuitBreaker, url: str) -> Any:
    try:
        return await cb.acall(url, data={})
    finally:
        await cb.aclose()


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_stream_of_keep_alives_only_times_out(driver: str) -> None:
    """Pings and comments forever: stream() fails with RequestTimeoutError after ``timeout``."""
    with _RawServer(_pings) as server:
        cb = LLMCircuitBreaker(retry={"max_retries": 0}, circuit_breaker={"timeout": 0.5})
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            if driver == "sync":
                list(cb.stream(server.url, data={}))
            else:
                asyncio.run(_astream(cb, server.url))
        elapsed = time.monotonic() - started
        cb.close()
    assert elapsed < 4.0


async def _astream(cb: LLMCircuitBreaker, url: str) -> list[Any]:
    try:
        return [event async for event in cb.astream(url, data={})]
    finally:
        await cb.aclose()


def _reader(timeout: float, clock: FakeClock) -> EventReader:
    return EventReader(prepare("http://h", "POST", None, None, timeout), clock=clock)


def test_keep_alives_are_no_progress_but_a_growing_event_is(clock: FakeClock) -> None:
    """Only events, or an event that grows, keep a stream alive past its timeout."""
    reader = _reader(1.0, clock)
    assert reader.feed(b'data: {"text": "') == []
    for _ in range(5):  # a long event arriving slowly, piece by piece
        clock.advance(0.9)
        assert reader.feed(b"z" * 100) == []
    clock.advance(0.9)
    assert [e.data for e in reader.feed(b'"}\n\n')] == [{"text": "z" * 500}]
    for _ in range(3):  # pings, a comment, a ping split in two: all within the timeout
        clock.advance(0.3)
        reader.feed(b"event: ping\ndata: {}\n\n: keep-alive\n\nevent: pi")
        reader.feed(b"ng\ndata: {}\n\n")
    clock.advance(0.5)  # 1.1 s since the split ping first grew: nothing else did
    with pytest.raises(RequestTimeoutError):
        reader.feed(b"event: ping\ndata: {}\n\n")


def test_stream_reads_a_gzip_bomb_in_bounded_pieces(llm_server: FakeLLMServer) -> None:
    """stream() over requests: a Content-Length gzip body inflating to 256 MiB without a line
    break fails at max_event_bytes with memory bounded (it was inflated in one piece)."""
    import tracemalloc

    bomb = _gzip_bomb(256)
    llm_server.default = Reply(
        headers={
            "Content-Type": "text/event-stream",
            "Content-Encoding": "gzip",
            "Content-Length": str(len(bomb)),
        },
        chunks=[bomb],
    )
    cb = LLMCircuitBreaker(retry={"max_retries": 0})
    tracemalloc.start()
    try:
        with pytest.raises(TransportError, match="max_event_bytes"):
            list(cb.stream(llm_server.url, data={}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        cb.close()
    assert peak < 64 * MiB
    assert cb.breaker.stats.failures == 1


# -- bounded breakers --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["openai:{model}", "callable"])
def test_transport_scoped_breakers_are_bounded_like_the_decorators(spec: str) -> None:
    """Past max_breakers, the least recently used clean CLOSED breakers go; an open one stays."""

    def handler(request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        return httpx.Response(500 if model == "broken" else 200, json={"ok": True})

    registry = BreakerRegistry(max_breakers=5)
    breaker: Any = (
        spec if spec != "callable" else (lambda r: "openai:" + json.loads(r.content)["model"])
    )
    transport = CircuitBreakerTransport(
        breaker, httpx.MockTransport(handler), registry=registry, failure_threshold=1
    )
    with httpx.Client(transport=transport) as client:
        client.post(URL, json={"model": "broken"})
        for number in range(200):
            client.post(URL, json={"model": f"model-{number}"})
    assert len(registry) <= 5 + 1
    assert "openai:broken" in registry  # open: kept
    assert "openai:model-199" in registry
    assert "openai:model-0" not in registry


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_stream_decodes_an_encoded_body_piece_by_piece(
    llm_server: FakeLLMServer, encoding: str
) -> None:
    """stream() over requests yields the events of a gzip / deflate SSE body sent in pieces."""
    body = ENCODINGS[encoding](WHOLE)
    llm_server.default = Reply(
        headers={"Content-Type": "text/event-stream", "Content-Encoding": encoding.split()[-1]},
        chunks=[body[i : i + 5] for i in range(0, len(body), 5)],
    )
    with LLMCircuitBreaker(retry={"max_retries": 0}) as cb:
        texts = [e.data["choices"][0]["delta"]["content"] for e in cb.stream(llm_server.url)]
    assert texts == ["Hel", "lo"]
