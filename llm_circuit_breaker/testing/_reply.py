"""What the fake provider answers: :class:`Reply`, a completion, an error, or a stream of
server-sent events in the OpenAI or Anthropic format."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Reply", "completion"]


def completion(text: str) -> dict[str, Any]:
    """An OpenAI chat completion whose answer is ``text``."""
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
        return cls(json=completion(text), **kwargs)

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
        """Chat Completions SSE: content chunks, then an optional error frame, then [DONE]. A
        whole stream's last chunk carries ``finish_reason: "stop"``; with ``done=False`` none
        does (a stream cut short)."""
        last = len(chunks) - 1 if done and error is None else -1
        frames = [
            _sse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "choices": [
                        {"index": 0, "delta": {"content": c}}
                        | ({"finish_reason": "stop"} if i == last else {})
                    ],
                }
            )
            for i, c in enumerate(chunks)
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
