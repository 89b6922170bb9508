"""What an answer means: a completion that came back 200 but is no answer.

Pure predicates over the openai and anthropic response objects and their dicts -- Chat
Completions (and legacy Completions), Responses and Anthropic Messages -- read by duck typing
(``obj["key"]`` for a mapping, ``obj.key`` otherwise; no SDK is imported). Each kind:

* ``empty``: finished normally (not cut by length, not filtered) with no text and no tool call;
* ``length_empty``: cut by the token limit (finish reason ``length``, ``max_tokens``, a
  Responses ``incomplete`` for ``max_output_tokens``) with no text and no tool call: a
  reasoning model spent its whole budget thinking;
* ``content_filter``: stopped by a content filter (finish reason ``content_filter``, a
  Responses ``incomplete`` for ``content_filter``, Anthropic ``stop_reason: refusal``);
* ``invalid_tool_arguments``: a tool call whose arguments are not valid JSON (an empty string
  counts as no arguments).

The kinds exclude each other (:func:`non_answer` names the one that applies). Anything that is
not a completion of a known shape -- a string, a stream, an object of another library -- is
no non-answer: every predicate is False for it. They never raise, whatever they are given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "CONTENT_FILTER",
    "EMPTY",
    "INVALID_TOOL_ARGUMENTS",
    "LENGTH_EMPTY",
    "RETRIED_BY_DEFAULT",
    "NonAnswer",
    "content_filter",
    "empty",
    "invalid_tool_arguments",
    "length_empty",
    "non_answer",
    "retried_by_default",
]

NonAnswer = Literal["empty", "length_empty", "content_filter", "invalid_tool_arguments"]

EMPTY: NonAnswer = "empty"
LENGTH_EMPTY: NonAnswer = "length_empty"
CONTENT_FILTER: NonAnswer = "content_filter"
INVALID_TOOL_ARGUMENTS: NonAnswer = "invalid_tool_arguments"

# What with_retry retries by default: another attempt may well answer. A length_empty answer
# would spend the same budget again, a filtered one would be filtered again.
RETRIED_BY_DEFAULT = frozenset({EMPTY, INVALID_TOOL_ARGUMENTS})

_MAX_ITEMS = 64  # choices, output items, content blocks looked at (a hostile list may be huge)
_MAX_ARGUMENTS = 1_000_000  # characters of tool arguments parsed; longer ones are not judged
_LENGTH_REASONS = frozenset({"length", "max_tokens", "max_output_tokens"})
_FILTER_REASONS = frozenset({"content_filter", "refusal"})
_ANTHROPIC_LENGTH = frozenset({"max_tokens", "model_context_window_exceeded"})
_ANTHROPIC_TOOLS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# Results that are never completions, answered without a look.
_SCALARS = frozenset({str, bytes, bytearray, int, float, bool, list, tuple, set, type(None)})
_MISSING = object()


def non_answer(response: object) -> NonAnswer | None:
    """The kind of non-answer ``response`` is (``"empty"``, ``"length_empty"``,
    ``"content_filter"``, ``"invalid_tool_arguments"``), or None: an answer, or not a
    completion of a known shape. Never raises."""
    if response.__class__ in _SCALARS:
        return None
    try:
        if _answers(response):  # the common case, seen without the full walk
            return None
        return _judge(response)
    except Exception:  # a hostile attribute or a shape of its own: no verdict
        return None


def empty(response: object) -> bool:
    """Whether ``response`` finished normally with no text and no tool call."""
    return non_answer(response) == EMPTY


def length_empty(response: object) -> bool:
    """Whether ``response`` was cut by the token limit before any text or tool call (a
    reasoning model spent its budget)."""
    return non_answer(response) == LENGTH_EMPTY


def content_filter(response: object) -> bool:
    """Whether ``response`` was stopped by a content filter (a refusal)."""
    return non_answer(response) == CONTENT_FILTER


def invalid_tool_arguments(response: object) -> bool:
    """Whether a tool call of ``response`` has arguments that are not valid JSON."""
    return non_answer(response) == INVALID_TOOL_ARGUMENTS


def retried_by_default(response: object) -> bool:
    """Whether ``with_retry`` retries ``response`` unless told otherwise (``empty`` and
    ``invalid_tool_arguments``)."""
    if response.__class__ in _SCALARS:
        return False
    try:
        if _answers(response):  # the common case, seen without the full walk
            return False
        return _judge(response) in RETRIED_BY_DEFAULT
    except Exception:  # a hostile attribute or a shape of its own: no verdict
        return False


# -- reading any shape ----------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` for a mapping, ``obj.key`` otherwise; ``_MISSING`` when absent. A pydantic
    model (the SDKs' objects) is asked only for its fields and extra fields: a missing
    attribute costs its ``__getattr__`` an exception (~3.5 us)."""
    cls = obj.__class__
    if cls is dict:  # a JSON dict, checked first
        return obj.get(key, _MISSING)
    fields = getattr(cls, "__pydantic_fields__", None)
    if fields.__class__ is dict:
        if key in fields:
            return getattr(obj, key, _MISSING)
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(key, _MISSING) if extra.__class__ is dict else _MISSING
    if isinstance(obj, Mapping):
        return obj.get(key, _MISSING)
    if cls in _SCALARS:
        return _MISSING
    return getattr(obj, key, _MISSING)


def _items(value: Any) -> list[Any]:
    """``value``'s first items when it is a list (a JSON array, or the SDK's list)."""
    return list(value[:_MAX_ITEMS]) if isinstance(value, list | tuple) else []


def _text(value: Any) -> bool:
    """Whether ``value`` is text with something in it."""
    return isinstance(value, str) and not value.isspace() and value != ""


def _valid_json(arguments: Any) -> bool:
    """Whether tool-call ``arguments`` are usable: parsed already (not a string), empty, or
    valid JSON."""
    if not isinstance(arguments, str):
        return True
    if arguments.strip() == "" or len(arguments) > _MAX_ARGUMENTS:
        return True
    try:
        json.loads(arguments)
    except (ValueError, RecursionError):
        return False
    return True


def _judge(response: Any) -> NonAnswer | None:
    kind = _get(response, "object")
    kind = kind if isinstance(kind, str) else None
    choices = _get(response, "choices")
    if isinstance(choices, list | tuple) and (
        kind in ("chat.completion", "text_completion") or _looks_like_choices(choices)
    ):
        return _chat(choices)
    if kind == "response":
        return _responses(response)
    if _get(response, "type") == "message" and isinstance(_get(response, "content"), list | tuple):
        return _messages(response)
    return None


_CHAT_KINDS = ("chat.completion", "text_completion")


def _answers(response: Any) -> bool:
    """Whether ``response`` is a Chat Completion (a dict or the SDK's object) whose first
    choice has text, no tool call and no content filter: an answer, whatever the other choices
    hold (one choice that answers is enough). False means "not decided here" (it may raise on a
    hostile object; :func:`non_answer` catches)."""
    if response.__class__ is dict:
        try:  # subscripts, not .get(): a KeyError is rare, and each .get() costs a call
            if response["object"] not in _CHAT_KINDS:
                return False
            choice = response["choices"][0]
            message = choice["message"]
            content = message["content"]
            if (
                response["choices"].__class__ is not list
                or choice.__class__ is not dict
                or message.__class__ is not dict
                or content.__class__ is not str
                or choice["finish_reason"] == "content_filter"
            ):
                return False
        except (KeyError, IndexError, TypeError):
            return False
        return (
            content != ""
            and not content.isspace()
            and not message.get("tool_calls")
            and message.get("function_call") is None
        )
    fields = getattr(response.__class__, "__pydantic_fields__", None)
    if fields.__class__ is dict and "object" not in fields:  # no chat completion: no miss
        return "stop_reason" in fields and _message_answers(response)
    if getattr(response, "object", None) not in _CHAT_KINDS:
        return False
    choices = getattr(response, "choices", None)
    if choices.__class__ is not list or not choices:
        return False
    choice = choices[0]
    if getattr(choice, "finish_reason", None) == "content_filter":
        return False
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    return (
        content.__class__ is str
        and content != ""
        and not content.isspace()
        and not getattr(message, "tool_calls", None)
        and getattr(message, "function_call", None) is None
    )


def _message_answers(message: Any) -> bool:
    """Whether an Anthropic message (the SDK's object) is text alone, its first block not
    empty, no refusal: an answer. False means "not decided here" (tool calls are checked by
    the full walk)."""
    if getattr(message, "type", None) != "message":
        return False
    if getattr(message, "stop_reason", None) in _FILTER_REASONS:
        return False
    content = getattr(message, "content", None)
    if content.__class__ is not list or not content:
        return False
    for block in content:
        if getattr(block, "type", None) != "text":
            return False
    return _text(getattr(content[0], "text", None))


def _looks_like_choices(choices: Any) -> bool:
    """Chat choices without the ``object`` marker: each has a message (or text) and a finish
    reason (an object of another library with a ``choices`` list is not judged)."""
    items = _items(choices)
    return bool(items) and all(
        (_get(c, "message") is not _MISSING or _get(c, "text") is not _MISSING)
        and _get(c, "finish_reason") is not _MISSING
        for c in items
    )


# -- Chat Completions -----------------------------------------------------------------------


def _chat(choices: Any) -> NonAnswer | None:
    """A completion is a non-answer when none of its choices answers; the kind is the first
    choice's."""
    kinds = [_choice(c) for c in _items(choices)]
    if not kinds:
        return EMPTY
    if any(k is None for k in kinds):
        return None
    return kinds[0]


def _choice(choice: Any) -> NonAnswer | None:
    reason = _get(choice, "finish_reason")
    if reason == "content_filter":
        return CONTENT_FILTER
    message = _get(choice, "message")
    text = _text(_get(choice, "text"))  # legacy Completions
    calls: list[Any] = []
    if message is not _MISSING and message is not None:
        content = _get(message, "content")
        text = text or _text(content) or _text(_get(message, "refusal"))
        text = text or any(_text(_get(part, "text")) for part in _items(content))
        calls = _items(_get(message, "tool_calls"))
        legacy = _get(message, "function_call")
        if legacy is not _MISSING and legacy is not None:
            calls.append({"function": legacy})
    for call in calls:
        function = _get(call, "function")
        if function is not _MISSING and not _valid_json(_get(function, "arguments")):
            return INVALID_TOOL_ARGUMENTS
    if text or calls:
        return None
    return LENGTH_EMPTY if reason in _LENGTH_REASONS else EMPTY


# -- Responses ------------------------------------------------------------------------------


def _responses(response: Any) -> NonAnswer | None:
    status = _get(response, "status")
    if status not in ("completed", "incomplete", None, _MISSING):
        return None  # failed, cancelled, queued, in progress: an error or no end yet
    details = _get(response, "incomplete_details")
    reason = _get(details, "reason") if details is not None and details is not _MISSING else None
    if reason == "content_filter":
        return CONTENT_FILTER
    text = called = False
    for item in _items(_get(response, "output")):
        kind = _get(item, "type")
        if kind == "message":
            for part in _items(_get(item, "content")):
                text = text or _text(_get(part, "text")) or _text(_get(part, "refusal"))
        elif kind == "function_call":
            called = True
            if not _valid_json(_get(item, "arguments")):
                return INVALID_TOOL_ARGUMENTS
        elif isinstance(kind, str) and kind.endswith("_call"):
            called = True  # a built-in tool ran (web search, code interpreter, custom ...)
    if text or called:
        return None
    return LENGTH_EMPTY if reason in _LENGTH_REASONS else EMPTY


# -- Anthropic Messages ---------------------------------------------------------------------


def _messages(message: Any) -> NonAnswer | None:
    reason = _get(message, "stop_reason")
    if reason in _FILTER_REASONS:
        return CONTENT_FILTER
    text = called = False
    for block in _items(_get(message, "content")):
        kind = _get(block, "type")
        if kind == "text":
            text = text or _text(_get(block, "text"))
        elif kind in _ANTHROPIC_TOOLS:
            called = True
            if not _valid_json(_get(block, "input")):
                return INVALID_TOOL_ARGUMENTS
    if text or called:
        return None
    return LENGTH_EMPTY if reason in _ANTHROPIC_LENGTH else EMPTY
