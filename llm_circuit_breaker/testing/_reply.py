"""What the fake provider answers: :class:`Reply`, a completion, an error, or a stream of
server-sent events in the OpenAI (Chat Completions, Responses) or Anthropic (Messages) format."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Reply", "completion", "provider_error"]


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
    first_token_delay: float = 0.0  # a stream's wait before its first content event ...
    first_content: int = 0  # ... which is ``events[first_content]``

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

    @classmethod
    def chat(
        cls,
        text: str = "Hello!",
        *,
        model: str = "fake-model",
        stream: bool = False,
        cut: bool = False,
    ) -> Reply:
        """An OpenAI chat completion of ``model`` answering ``text``; ``stream`` makes it SSE
        chunks ending with a finish reason and ``data: [DONE]``, ``cut`` stops it before them."""
        if not stream:
            return cls(json={**completion(text), "created": _now(), "model": model})
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": _now()}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**head, "model": model, "choices": [choice]})

        frames = [chunk({"role": "assistant", "content": ""})]
        frames += [chunk({"content": piece}) for piece in _pieces(text)]
        end = len(frames)
        frames += [chunk({}, "stop"), _sse("[DONE]")]
        return cls(events=frames[:end] if cut else frames, first_content=1)

    @classmethod
    def responses(
        cls,
        text: str = "Hello!",
        *,
        model: str = "fake-model",
        stream: bool = False,
        cut: bool = False,
    ) -> Reply:
        """An OpenAI Responses answer of ``model``; ``stream`` makes it the typed SSE events
        from ``response.created`` to ``response.completed``, ``cut`` stops after the deltas."""
        if not stream:
            return cls(json=_response(text, model, "completed"))
        item = {"id": "msg_fake", "type": "message", "role": "assistant"}
        part = {"type": "output_text", "text": text, "annotations": []}
        where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": _response("", model, "in_progress")}),
            ("response.in_progress", {"response": _response("", model, "in_progress")}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
            ),
            ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
        ]
        events += [
            ("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
            for piece in _pieces(text)
        ]
        end = len(events)
        events += [
            ("response.output_text.done", {**where, "text": text, "logprobs": []}),
            ("response.content_part.done", {**where, "part": part}),
            (
                "response.output_item.done",
                {"output_index": 0, "item": {**item, "status": "completed", "content": [part]}},
            ),
            ("response.completed", {"response": _response(text, model, "completed")}),
        ]
        frames = [
            _sse({"type": name, **data, "sequence_number": n}, name)
            for n, (name, data) in enumerate(events[:end] if cut else events)
        ]
        return cls(events=frames, first_content=4)

    @classmethod
    def messages(
        cls,
        text: str = "Hello!",
        *,
        model: str = "fake-model",
        stream: bool = False,
        cut: bool = False,
    ) -> Reply:
        """An Anthropic message of ``model``; ``stream`` makes it SSE (message_start,
        content_block_start, ping, deltas, content_block_stop, message_delta, message_stop),
        ``cut`` stops after the deltas."""
        tokens = max(1, len(_pieces(text)))
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": tokens},
        }
        if not stream:
            return cls(json=message, headers={"request-id": "req_fake"})
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": 1, "output_tokens": 1}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"message": start}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("ping", {}),
        ]
        events += [
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
            for piece in _pieces(text)
        ]
        end = len(events)
        events += [
            ("content_block_stop", {"index": 0}),
            (
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": tokens},
                },
            ),
            ("message_stop", {}),
        ]
        frames = [
            _sse({"type": name, **data}, name) for name, data in (events[:end] if cut else events)
        ]
        return cls(events=frames, headers={"request-id": "req_fake"}, first_content=3)


def _now() -> int:
    return int(time.time())


def _pieces(text: str) -> list[str]:
    """``text`` in pieces of three characters, as a stream delivers it (one empty piece for
    an empty text)."""
    return [text[i : i + 3] for i in range(0, len(text), 3)] or [""]


def _response(text: str, model: str, status: str) -> dict[str, Any]:
    """An OpenAI Responses object; its ``output`` holds ``text`` once it is completed."""
    done = status == "completed"
    content = [{"type": "output_text", "text": text, "annotations": []}]
    output = [
        {
            "id": "msg_fake",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }
    ]
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": _now(),
        "status": status,
        "model": model,
        "output": output if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "usage": {
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": max(1, len(_pieces(text))),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1 + max(1, len(_pieces(text))),
        }
        if done
        else None,
    }


# How each provider reports an outage, by status: (error type, code, message). OpenAI puts
# its machine code in ``error.code``; Anthropic has only ``error.type`` (see its errors page).
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests"),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("service_unavailable_error", "server_is_overloaded", "The server is overloaded."),
    504: ("server_error", "timeout", "Gateway timeout."),
    529: ("overloaded_error", "server_is_overloaded", "Overloaded"),
}
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low."),
    403: ("permission_error", "Your API key does not have permission."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed size."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}


def provider_error(
    status: int, *, anthropic: bool = False, headers: Mapping[str, str] | None = None
) -> Reply:
    """A provider's error answer for ``status``, shaped as OpenAI (``{"error": {message, type,
    param, code}}`` with ``x-request-id``) or Anthropic (``{"type": "error", "error": {type,
    message}, "request_id"}`` with ``request-id`` and ``x-should-retry`` on 429 / 5xx)."""
    extra = dict(headers or {})
    if anthropic:
        kind, message = _ANTHROPIC_ERRORS.get(
            status,
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", "Invalid request."),
        )
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": "req_fake",
        }
        head = {"request-id": "req_fake"}
        if status == 429 or status >= 500:
            head["x-should-retry"] = "true"
        return Reply(status=status, json=body, headers={**head, **extra})
    kind, code, message = _OPENAI_ERRORS.get(
        status,
        ("server_error", None, "The server had an error while processing your request.")
        if status >= 500
        else ("invalid_request_error", None, "Invalid request."),
    )
    inner = {"message": message, "type": kind, "param": None, "code": code}
    return Reply(
        status=status, json={"error": inner}, headers={"x-request-id": "req_fake", **extra}
    )
