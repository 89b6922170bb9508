"""Hostile HTTP exchanges meet the drivers and the httpx transport: bounded reads, bounded
time, encoded streams watched like plain ones."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llm_circuit_breaker import BreakerRegistry, IncompleteStreamError, TransportError
from llm_circuit_breaker.httpx import CircuitBreakerTransport

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
