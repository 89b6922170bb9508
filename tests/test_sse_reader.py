"""The SSE reader's byte-level paths: lines across chunks, line endings, fields, frames checked
inline, and a stream's token estimate made only for a breaker that reads it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_circuit_breaker import IncompleteStreamError, LLMCircuitBreaker, ServerError
from llm_circuit_breaker.http import client as client_module
from llm_circuit_breaker.http._common import prepare
from llm_circuit_breaker.http._sse import EventReader, LineSplitter, SSEEvent
from llm_circuit_breaker.testing import FakeLLMServer, Reply

CHUNK = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "a"}}]}
LAST = {"object": "chat.completion.chunk", "choices": [{"delta": {}, "finish_reason": "stop"}]}


def _reader() -> EventReader:
    return EventReader(prepare("http://h", "POST", None, None, 60.0))


def _frames(*frames: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
def test_events_are_the_same_whatever_the_chunks(size: int) -> None:
    """CRLF and LF line ends, comments, event names, ids, multi-line data and ``data`` without
    a colon, cut at every size: the same events."""
    body = (
        b": keep-alive\r\n\r\n"
        b'event: delta\r\nid: 7\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"data\n\n"
        b"event: ping\ndata: {}\n\n"
        + _frames(CHUNK, LAST)
        + b'data: [DONE]\n\ndata: {"after": 1}\n\n'
    )
    reader = _reader()
    events: list[SSEEvent] = []
    for start in range(0, len(body), size):
        events.extend(reader.feed(body[start : start + size]))
        if reader.done:
            break
    assert events == [
        SSEEvent("delta", {"a": 1}, "7"),
        SSEEvent("message", "", "7"),
        SSEEvent("message", CHUNK, "7"),
        SSEEvent("message", LAST, "7"),
    ]
    assert reader.done
    reader.finish()  # the finish reason came: a whole stream


def test_a_line_begun_in_an_earlier_chunk_counts_toward_the_bound() -> None:
    lines = LineSplitter(10, "http://h")
    assert lines.feed(b"data: 1234") == []
    with pytest.raises(Exception, match="max_event_bytes=10"):
        lines.feed(b"5")
    lines = LineSplitter(10, "http://h")
    assert lines.feed(b"abc") == []
    assert lines.feed(b"def\r\nghi\r\n\r\nj") == [b"abcdef", b"ghi", b""]
    assert lines.rest() == b"j"


def test_a_chat_stream_without_its_finish_reason_is_cut_short() -> None:
    reader = _reader()
    assert len(reader.feed(_frames(CHUNK, CHUNK))) == 2
    with pytest.raises(IncompleteStreamError):
        reader.finish()


def test_an_error_frame_after_content_raises() -> None:
    reader = _reader()
    with pytest.raises(ServerError):
        reader.feed(_frames(CHUNK, {"error": {"type": "server_error", "message": "boom"}}))


def test_stream_estimates_tokens_only_for_a_breaker_that_reads_them(
    llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimated: list[Any] = []
    real = client_module.estimate_tokens  # type: ignore[attr-defined]

    def counting(data: Any) -> float:
        estimated.append(data)
        return real(data)

    monkeypatch.setattr(client_module, "estimate_tokens", counting)
    stream = Reply(
        chunks=[_frames(CHUNK, LAST) + b"data: [DONE]\n\n"],
        headers={"Content-Type": "text/event-stream"},
    )
    body = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
    llm_server.default = stream
    with LLMCircuitBreaker(retry={"max_retries": 0}) as plain:
        assert [e.data for e in plain.stream(llm_server.url, data=body)] == [CHUNK, LAST]
    assert estimated == []  # nothing reads a cost: none estimated
    with LLMCircuitBreaker(
        retry={"max_retries": 0}, circuit_breaker={"token_budget": 10_000}
    ) as budgeted:
        assert len(list(budgeted.stream(llm_server.url, data=body))) == 2
    assert estimated == [body]
