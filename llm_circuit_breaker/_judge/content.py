"""Whether a stream item carries content: the one judgement of what "the first token" is.

Providers open a stream with events that say nothing yet -- OpenAI's role-only first chunk,
Anthropic's ``message_start`` and ``ping``, the Responses API's ``response.created`` -- and
some keep a quiet connection alive with SSE comments or ``ping`` events. A latency decision
(hedging, a first-token deadline) must wait for the first item with *content*: text, a
refusal's text, reasoning text, or a tool call (its start or a piece of its arguments).

:func:`is_content` judges one item, whatever shape the stream yields: a dict (a parsed SSE
frame), an SSE event object (``.event`` and ``.data``, such as ``SSEEvent`` or an SDK's
``ServerSentEvent``), an SDK's chunk object (openai ``ChatCompletionChunk``, a Responses
event, anthropic's raw or helper events), text (``str``, a piece of the answer) or raw bytes
of an SSE body. Pure: no I/O, never raises. An item of a shape it does not know counts as
content (it is something the function chose to yield).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["is_content"]

# Event names that only keep a connection alive or mark a stream's lifecycle.
_QUIET_EVENTS = frozenset({"ping", "keep-alive", "keepalive", "heartbeat", "error"})

# Fields of a delta (OpenAI chat, Anthropic content block deltas, helper events) whose
# non-empty text is content: the answer, a refusal, reasoning, a tool call's arguments.
_TEXT_FIELDS = (
    "content",
    "text",
    "refusal",
    "reasoning_content",
    "reasoning",
    "thinking",
    "partial_json",
    "arguments",
)

# Anthropic content blocks that are a tool call from their start (the name comes first).
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})

# Responses API output items that are a call from the moment they are added.
_CALL_ITEMS = frozenset(
    {"function_call", "custom_tool_call", "computer_call", "mcp_call", "code_interpreter_call"}
)

_MISSING = object()


def is_content(item: object) -> bool:
    """Whether ``item`` carries content (text or a tool call), not only a stream's framing.

    Role-only or empty deltas, lifecycle events (``message_start``, ``content_block_stop``,
    ``response.created`` ...), ``ping`` / keep-alive events, SSE comments, error frames and
    ``[DONE]`` are not content; a non-empty text piece or tool-call delta is.
    """
    try:
        return _judge(item)
    except Exception:  # a hostile attribute: what it is cannot be told, so it is an answer
        return True


def _judge(item: object) -> bool:
    if item is None:
        return False
    if isinstance(item, str):
        return item != ""
    if isinstance(item, bytes | bytearray | memoryview):
        return _raw_sse(bytes(item))
    if isinstance(item, Mapping):
        return _frame(item)
    event = getattr(item, "event", _MISSING)
    data = getattr(item, "data", _MISSING)
    if (event is None or isinstance(event, str)) and data is not _MISSING:
        return _sse_event(event, data)  # SSEEvent, an SDK's ServerSentEvent
    if getattr(item, "choices", _MISSING) is not _MISSING or isinstance(
        getattr(item, "type", None), str
    ):
        return _frame(item)  # an SDK's chunk or event object
    return True


def _field(obj: object, name: str) -> Any:
    """``obj[name]`` of a mapping, ``obj.name`` of an object; None when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _text(value: object) -> bool:
    """Non-empty text, or a non-empty list of parts (some providers send content parts)."""
    if isinstance(value, str):
        return value != ""
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return len(value) > 0
    return False


def _sse_event(event: str | None, data: object) -> bool:
    if event in _QUIET_EVENTS:
        return False
    if isinstance(data, str):
        stripped = data.strip()
        if stripped in ("", "[DONE]"):
            return False
        if stripped[0] in "{[":
            try:
                data = json.loads(stripped)
            except ValueError:
                return True
        else:
            return True  # plain text data
    if isinstance(data, Mapping) or hasattr(data, "type") or hasattr(data, "choices"):
        return _frame(data)
    return data is not None


def _frame(frame: object) -> bool:
    """An OpenAI chat chunk (or completion), a Responses event, an Anthropic event."""
    choices = _field(frame, "choices")
    if choices is not None:
        return isinstance(choices, Sequence) and any(_choice(c) for c in choices)
    if not isinstance(frame, Mapping) and getattr(frame, "choices", _MISSING) is not _MISSING:
        return False  # an SDK's chunk without choices: what it makes of a ping or an empty frame
    if _field(frame, "error") is not None:
        return False
    kind = _field(frame, "type")
    if isinstance(kind, str):
        return _typed(frame, kind)
    delta = _field(frame, "delta")
    if delta is not None:
        return _delta(delta)
    return True  # a dict of a shape not known here: the function's own item


def _typed(frame: object, kind: str) -> bool:
    if kind == "content_block_delta":  # Anthropic
        return _delta(_field(frame, "delta"))
    if kind == "content_block_start":
        block = _field(frame, "content_block")
        return _field(block, "type") in _TOOL_BLOCKS or _text(_field(block, "text"))
    if kind in ("text", "thinking", "input_json"):  # the anthropic SDK's helper events
        return any(_text(_field(frame, name)) for name in ("text", "thinking", "partial_json"))
    if kind.startswith("response."):  # the Responses API
        if kind.endswith(".delta"):
            return _text(_field(frame, "delta"))
        if kind == "response.output_item.added":
            return _field(_field(frame, "item"), "type") in _CALL_ITEMS
        return False
    return False  # message_start, ping, content_block_stop, message_delta, message_stop ...


def _choice(choice: object) -> bool:
    delta = _field(choice, "delta")
    if delta is not None:
        return _delta(delta)
    message = _field(choice, "message")  # a whole completion: content from the start
    if message is not None:
        return _delta(message)
    return _text(_field(choice, "text"))  # the legacy completions API


def _delta(delta: object) -> bool:
    if delta is None:
        return False
    if isinstance(delta, str):
        return delta != ""
    if any(_text(_field(delta, name)) for name in _TEXT_FIELDS):
        return True
    tool_calls = _field(delta, "tool_calls")
    if isinstance(tool_calls, Sequence) and len(tool_calls) > 0:
        return True
    return _field(delta, "function_call") is not None


def _raw_sse(body: bytes) -> bool:
    """Raw bytes of an SSE body: content unless only blank lines, comments, quiet events and
    data without content. Bytes that are not SSE at all are content."""
    event: str | None = None
    for raw in body.splitlines():
        line = raw.strip()
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value.strip()
        if name == b"event":
            event = value.decode(errors="replace")
        elif name == b"data":
            if _sse_event(event, value.decode(errors="replace")):
                return True
        elif name not in (b"id", b"retry"):
            return True  # not an SSE line: a body's own bytes
    return False
