"""Hostile HTTP exchanges meet the drivers and the httpx transport: bounded reads, bounded
time, encoded streams watched like plain ones."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llm_circuit_breaker import BreakerRegistry, IncompleteStreamError, TransportError
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeLLMServer, Reply

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
