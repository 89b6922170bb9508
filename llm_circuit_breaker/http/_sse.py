"""Server-sent events, decoded the same way by both drivers, in time linear in the input.

:class:`LineSplitter` cuts the body's chunks into lines with a bounded buffer (a line longer
than ``max_event_bytes`` is a ``TransportError``, never unbounded memory), :class:`SSEDecoder`
assembles events from lines, :class:`StreamChecker` turns provider error frames into errors and
notices a stream cut before its terminal frame, and :class:`EventReader` ties them together.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from llm_circuit_breaker._judge.classify import classify_response
from llm_circuit_breaker._judge.content import is_content
from llm_circuit_breaker._judge.kinds import parse_json
from llm_circuit_breaker._judge.results import (
    CONTENT_FILTER,
    EMPTY,
    INVALID_TOOL_ARGUMENTS,
    LENGTH_EMPTY,
    RETRIED_BY_DEFAULT,
    NonAnswer,
    non_answer,
    retried_by_default,
)
from llm_circuit_breaker.errors import (
    HTTPStatusError,
    IncompleteStreamError,
    RequestTimeoutError,
    TransportError,
    http_status_error,
)
from llm_circuit_breaker.http._common import (
    PreparedRequest,
    error_type_of,
    is_sse,
    parse_response,
)

__all__ = [
    "DONE",
    "EventReader",
    "Events",
    "LineSplitter",
    "SSEDecoder",
    "SSEEvent",
    "StreamChecker",
    "Unanswered",
    "is_json",
    "judge_whole",
    "parse_answer",
    "retried_answer",
    "whole_answer",
]


class LineSplitter:
    """Cuts chunks of bytes into lines (without their endings), scanning each byte once: a
    line that began in an earlier chunk is ended by one ``find``, the chunk's other lines by
    one ``split``."""

    __slots__ = ("_buffer", "_cr", "_limit", "_url")

    def __init__(self, limit: int, url: str) -> None:
        self._buffer = bytearray()  # the start of a line waiting for its end
        self._limit = limit
        self._url = url
        self._cr = False  # the last chunk ended with a CR: a LF starting the next is its pair

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines completed by ``chunk``."""
        if self._cr or chunk.find(b"\r") >= 0:
            chunk = self._newlines(chunk)
        buffer = self._buffer
        if buffer:
            end = chunk.find(b"\n")
            if end < 0:
                buffer += chunk
                self._bound()
                return []
            buffer += chunk[:end]
            head = bytes(buffer)
            buffer.clear()
            chunk = chunk[end + 1 :]
            lines = chunk.split(b"\n")
            lines.insert(0, head)
        else:
            lines = chunk.split(b"\n")
        rest = lines.pop()
        if rest:
            buffer += rest
            self._bound()
        return lines

    def _newlines(self, chunk: bytes) -> bytes:
        """``chunk`` with its line ends as LF alone: SSE ends a line with CR LF, LF or a lone
        CR (a CR LF pair may be cut between two chunks)."""
        if not chunk:
            return chunk
        if self._cr and chunk[0] == 10:  # the LF of a CR LF whose CR ended the last chunk
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _bound(self) -> None:
        if len(self._buffer) > self._limit:
            raise TransportError(
                f"server-sent event line longer than max_event_bytes={self._limit}",
                url=self._url,
            )

    @property
    def empty(self) -> bool:
        """Whether no part of a line is waiting for its end."""
        return not self._buffer

    @property
    def pending(self) -> int:
        """How many bytes of a line are waiting for its end."""
        return len(self._buffer)

    def rest(self) -> bytes:
        """What is left after the last line break (at the end of the body)."""
        return bytes(self._buffer)


@dataclasses.dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: ``data`` is parsed JSON, or the raw string when it is not JSON."""

    event: str
    data: Any
    id: str | None = None


def _new_event(event: str, data: Any, id: str | None) -> SSEEvent:
    """``SSEEvent(event, data, id)`` through its slots' descriptors: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, a third slower, once per
    event."""
    made = _NEW(SSEEvent)
    _SET_EVENT(made, event)
    _SET_DATA(made, data)
    _SET_ID(made, id)
    return made


_NEW = SSEEvent.__new__
_SLOTS: dict[str, Any] = dict(vars(SSEEvent))  # the member descriptors of its slots
_SET_EVENT = _SLOTS["event"].__set__
_SET_DATA = _SLOTS["data"].__set__
_SET_ID = _SLOTS["id"].__set__

DONE = SSEEvent("done", "[DONE]")  # OpenAI's end-of-stream marker; never yielded


class SSEDecoder:
    """Assembles server-sent events from lines (without their line endings)."""

    __slots__ = ("_data", "_event", "_id", "_limit", "_size", "_url")

    def __init__(self, limit: int = 8 * 1024 * 1024, url: str = "") -> None:
        self._event: str | None = None
        self._data: list[bytes] = []
        self._id: str | None = None
        self._size = 0
        self._limit = limit
        self._url = url

    @property
    def pending(self) -> int:
        """How many bytes of data the event being assembled holds."""
        return self._size

    def feed(self, line: bytes) -> SSEEvent | None:
        """Take one line (without its ending); return an event when a blank line completes
        one."""
        if not line:
            return self.flush()
        if line.startswith(b"data:"):
            self.data(line)
        elif not line.startswith(b":"):  # a comment is a keep-alive
            self.field(line)
        return None

    def data(self, line: bytes) -> None:
        """Take a ``data:`` line."""
        value = line[6:] if line[5:6] == b" " else line[5:]
        self._size += len(value) + 1
        if self._size > self._limit:
            self.overflow()
        self._data.append(value)

    def overflow(self) -> NoReturn:
        """Raise for an event grown past ``max_event_bytes``."""
        raise TransportError(
            f"server-sent event larger than max_event_bytes={self._limit}", url=self._url
        )

    def field(self, line: bytes) -> None:
        """Take a line of another field (``event``, ``id``; others are ignored)."""
        name, _, raw = line.partition(b":")
        if name == b"data":  # "data" without a colon: an empty data line
            self.data(b"data:")
            return
        value = raw.removeprefix(b" ").decode("utf-8", errors="replace")
        if name == b"event":
            self._event = value
        elif name == b"id":
            self._id = value

    def flush(self) -> SSEEvent | None:
        """Emit the event being assembled, if any (at a blank line or the end of the stream)."""
        data = self._data
        if not data and self._event is None:
            return None
        raw = data[0] if len(data) == 1 else b"\n".join(data)
        event = self._event or "message"
        self._event, self._data, self._size = None, [], 0
        if raw == b"[DONE]":
            return DONE
        return _new_event(event, parse_json(raw), self._id)


# Provider streams with a terminal frame: a stream that ends without it was cut off.
_TERMINAL = frozenset({"message_stop", "response.completed", "response.incomplete", "done"})
_STARTS = frozenset({"message_start", "response.created"})
_FINAL_RESPONSES = frozenset({"response.completed", "response.incomplete"})
_FILTER_REASONS = frozenset({"content_filter", "refusal"})
_LENGTH_REASONS = frozenset(
    {"length", "max_tokens", "max_output_tokens", "model_context_window_exceeded"}
)
_SPENT = frozenset({EMPTY, LENGTH_EMPTY})
# Anthropic deltas of reasoning: content for a first token, no answer.
_REASONING_DELTAS = frozenset({"thinking_delta", "signature_delta"})
_MAX_ARGUMENTS = 1024 * 1024  # characters of streamed tool-call arguments kept to judge
_UNJUDGED = object()


class StreamChecker:
    """Finds provider error frames in a stream, notices one cut before its terminal frame, and
    keeps what its end says of the answer (its finish reason, whether text or a tool call came,
    a chat stream's tool-call arguments, a Responses stream's final response judged whole)."""

    __slots__ = (
        "_answered",
        "_arguments",
        "_calling",
        "_ended",
        "_final",
        "_known",
        "_needs_end",
        "_reason",
        "_size",
        "_url",
    )

    def __init__(self, url: str) -> None:
        self._url = url
        self._needs_end = False
        self._ended = False  # a terminal frame or a finish reason has come
        self._known = False  # a provider's stream (a chat chunk, a message or response start)
        self._reason: str | None = None  # the finish (stop) reason, once one came
        self._final: object = _UNJUDGED  # a Responses stream's final response, judged
        # Whether text or a tool call has come (reasoning alone answers nothing). Frames are
        # looked at for it until it has: a reader that parses only some frames (the httpx
        # transport's watch) parses every one until then.
        self._answered = False
        # A chat stream's tool-call arguments, piece by piece, by (choice, call); None once
        # they outgrew _MAX_ARGUMENTS (then not judged)
        self._arguments: dict[tuple[int, int], list[str]] | None = {}
        self._size = 0
        self._calling = False  # a chat tool call has come (its arguments' pieces may follow)

    def check(self, event: SSEEvent) -> bool:
        """Whether to hand ``event`` to the caller; raises for an error frame."""
        error = self.error_in(event)
        if error is not None:
            raise error
        return event is not DONE and event.event != "ping"

    def error_in(self, event: SSEEvent) -> HTTPStatusError | None:
        """The provider error ``event`` carries, if it is an error frame (and follow whether
        the stream's terminal frame has come, and what the answer holds)."""
        data = event.data
        if type(data) is dict:  # a parsed frame (the common case): fewer tests
            kind = data.get("type")
            # a frame with an error (as the SDKs test it: a null or empty "error" is none)
            if data.get("error") or kind == "error" or event.event == "error":
                return self._error(data)
            if kind == "response.failed" or event.event == "response.failed":
                response = data.get("response")
                return self._error(response if isinstance(response, dict) else data)
            if not self._answered:  # until text or a tool call has come
                self._answered = _answers(event, data, kind)
            if self._ended:  # nothing below changes once the stream's end has come
                return None
            name = kind if isinstance(kind, str) else event.event
            if name in _STARTS or data.get("object") == "chat.completion.chunk":
                self._needs_end = self._known = True
            if name in _TERMINAL:
                self._needs_end, self._ended = False, True
                if name in _FINAL_RESPONSES:  # the whole response: judged as one
                    self._final = non_answer(data.get("response"))
                return None
            if name == "message_delta":  # Anthropic: the stop reason, before message_stop
                delta = data.get("delta")
                if type(delta) is dict:
                    reason = delta.get("stop_reason")
                    if reason and type(reason) is str:  # a reason of another type is none
                        self._reason = reason
                return None
            choices = data.get("choices")
            if type(choices) is list:
                for choice in choices:  # a loop, not any(): this runs for every chat chunk
                    if type(choice) is not dict:
                        continue
                    delta = choice.get("delta")
                    if delta.__class__ is dict and (
                        "tool_calls" in delta or "function_call" in delta
                    ):
                        self._keep_arguments(choice, delta)
                    if choice.get("finish_reason"):
                        self._needs_end, self._ended = False, True
                        reason = choice["finish_reason"]
                        self._reason = reason if type(reason) is str else None
                        break
            return None
        kind = None
        if (
            event.event == "error"
            or kind == "error"
            or (isinstance(data, dict) and data.get("error"))
        ):
            return self._error(data)
        if event.event == "response.failed" or kind == "response.failed":
            response = data.get("response") if isinstance(data, dict) else None
            return self._error(response if isinstance(response, dict) else data)
        name = kind if isinstance(kind, str) else event.event
        if name in ("message_start", "response.created") or (
            isinstance(data, dict) and data.get("object") == "chat.completion.chunk"
        ):
            self._needs_end = not self._ended
        if event is DONE or name in _TERMINAL or _finished(data):
            self._needs_end, self._ended = False, True
        return None

    def _keep_arguments(self, choice: dict[str, Any], delta: dict[str, Any]) -> None:
        """Keep the pieces of tool-call arguments a chat chunk's choice carries in its
        ``delta``."""
        calls = delta.get("tool_calls")
        legacy = delta.get("function_call")
        if not calls and legacy is None:
            return
        self._calling = True
        if self._arguments is None:  # too long to judge already
            return
        index = choice.get("index")
        number = index if type(index) is int else 0
        slots: list[tuple[Any, int | None]] = (
            [(call, None) for call in calls] if type(calls) is list else []
        )
        if type(legacy) is dict:
            slots.append(({"function": legacy}, -1))
        for call, slot in slots:
            function = call.get("function") if type(call) is dict else None
            piece = function.get("arguments") if type(function) is dict else None
            if type(piece) is not str or not piece:
                continue
            if slot is None:
                position = call.get("index")
                slot = position if type(position) is int else 0
            self._size += len(piece)
            arguments = self._arguments
            if arguments is None or self._size > _MAX_ARGUMENTS:
                self._arguments = None  # too long to judge
                return
            arguments.setdefault((number, slot), []).append(piece)

    @property
    def ended(self) -> bool:
        """Whether the provider's terminal frame (or a finish reason) has come."""
        return self._ended

    @property
    def answered(self) -> bool:
        """Whether text or a tool call has come (reasoning alone is none)."""
        return self._answered

    @property
    def incomplete(self) -> bool:
        """Whether the stream so far lacks its provider's terminal frame."""
        return self._needs_end

    def non_answer(self) -> NonAnswer | None:
        """What the whole stream was, once its end came, when it answered nothing:
        ``content_filter`` (a finish reason ``content_filter``, a stop reason ``refusal``),
        ``invalid_tool_arguments`` (a chat stream's tool-call arguments, put together, are not
        JSON), ``length_empty`` or ``empty`` (no text nor tool call came -- reasoning alone
        answers nothing -- cut by the token limit or not); a Responses stream's final response
        is judged whole (``results.non_answer``; an empty one after text deltas is an answer).
        None for an answer, and for a stream of no provider's shape or not ended. Never
        raises: a shape it cannot judge is an answer."""
        try:
            return self._judge()
        except Exception:
            return None

    def _judge(self) -> NonAnswer | None:
        final = self._final
        if final is not _UNJUDGED:
            if final in _SPENT and self._answered:  # the final response left its text out
                return None
            return final  # type: ignore[return-value]
        reason = self._reason
        if reason in _FILTER_REASONS:
            return CONTENT_FILTER
        if not (self._known and self._ended):
            return None
        if self._arguments and not all(map(_valid_json, self._arguments.values())):
            return INVALID_TOOL_ARGUMENTS
        if self._answered:
            return None
        return LENGTH_EMPTY if reason in _LENGTH_REASONS else EMPTY

    def finish(self) -> None:
        """Call at the end of the stream: raises if the provider's terminal frame never came."""
        if self._needs_end:
            raise IncompleteStreamError("stream ended before its final event", url=self._url)

    def _error(self, payload: Any) -> HTTPStatusError:
        status = classify_response(200, None, payload).status or 500
        return http_status_error(
            status, None, payload, self._url, error_type=error_type_of(payload)
        )


def _spoken(value: object) -> bool:
    """Text with something in it, or a list of content parts."""
    if type(value) is str:
        return value != "" and not value.isspace()
    return type(value) is list and len(value) > 0


def _answers(event: SSEEvent, data: dict[str, Any], kind: object) -> bool:
    """Whether ``event`` (its parsed frame ``data``) carries text or a tool call: a chat
    chunk's content, refusal or tool call; another event's content (``is_content``) unless it
    is reasoning (Anthropic's thinking deltas, the Responses API's reasoning events)."""
    choices = data.get("choices")
    if choices is not None:
        if type(choices) is not list:
            return False
        for choice in choices:
            if type(choice) is not dict:
                continue
            delta = choice.get("delta")
            if delta is None:
                delta = choice.get("message")
            if type(delta) is dict:
                if (
                    _spoken(delta.get("content"))
                    or _spoken(delta.get("refusal"))
                    or delta.get("tool_calls")
                    or delta.get("function_call") is not None
                ):
                    return True
            elif _spoken(delta) or _spoken(choice.get("text")):
                return True
        return False
    if kind == "content_block_delta":
        delta = data.get("delta")
        if type(delta) is dict:
            kind = delta.get("type")
            if type(kind) is str and kind in _REASONING_DELTAS:
                return False
    elif type(kind) is str and kind.startswith("response.") and "reasoning" in kind:
        return False
    return is_content(event)


def _valid_json(pieces: list[str]) -> bool:
    """Whether tool-call arguments put together are JSON (or nothing)."""
    text = "".join(pieces)
    if text.isspace():
        return True
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _finished(data: Any) -> bool:
    """Whether a chat chunk carries a finish reason (the answer is whole even without
    ``[DONE]``)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if type(choices) is not list:
        return False
    return any(isinstance(choice, dict) and choice.get("finish_reason") for choice in choices)


class Events(list[SSEEvent]):
    """What ``call()`` / ``acall()`` return for an answer of server-sent events: its events
    (a list), and ``non_answer``, the kind of non-answer they are (``results.non_answer``'s
    kinds) or None for an answer."""

    __slots__ = ("non_answer",)

    def __init__(self, events: Iterable[SSEEvent] = (), non_answer: NonAnswer | None = None):
        super().__init__(events)
        self.non_answer = non_answer

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self), self.non_answer))


def retried_answer(result: object) -> bool:
    """``results.retried_by_default`` that also judges ``call()``'s :class:`Events` by their
    kind: the HTTP helpers' default ``retry_on_result``."""
    if result.__class__ is Events:
        return result.non_answer in RETRIED_BY_DEFAULT
    return retried_by_default(result)


class Unanswered(Exception):
    """A whole answer that answers nothing (``results.non_answer``'s kinds: empty, spent on
    reasoning, filtered): raised at its end inside the breaker's guard, which ignores it (no
    outage), and caught right outside it (the facade's routes): ``call()`` returns
    ``events``, a stream simply ends."""

    def __init__(self, kind: NonAnswer, events: list[SSEEvent] | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.events = events


class EventReader:
    """What a driver does with each raw line of an SSE body: decode, check, and say when the
    provider's stream is over. Both drivers loop over their lines and hand them here."""

    __slots__ = (
        "_checker",
        "_clock",
        "_decoder",
        "_high",
        "_last",
        "_lines",
        "_request",
        "content",
        "done",
    )

    def __init__(
        self, request: PreparedRequest, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lines = LineSplitter(request.max_event_bytes, request.url)
        self._decoder = SSEDecoder(request.max_event_bytes, request.url)
        self._checker = StreamChecker(request.url)
        self._request = request
        self._clock = clock
        self._last = clock()  # when the stream last made progress
        self._high = 0  # the most bytes of one event pending since then
        self.done = False  # [DONE] seen: stop reading
        self.content = False  # whether an event with content (text, a tool call) has come

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events to yield for this chunk of the body (raises for a provider error frame);
        after ``[DONE]`` (``done``) the rest is ignored.

        A stream makes progress when it yields an event or when the event it is sending grows
        (bounded by ``max_event_bytes``); keep-alives (comments, pings) are no progress, so a
        stream that sends only them fails once ``timeout`` has passed without any: the
        drivers' read timeouts never fire on it.

        Lines stay bytes: a ``data`` line is a prefix test and an append, and an event's data
        is decoded once, as it is parsed."""
        events: list[SSEEvent] = []
        decoder, checker = self._decoder, self._checker
        for line in self._lines.feed(chunk):
            if not line:
                if decoder._data or decoder._event is not None:
                    event = decoder.flush()
                    if event is DONE:
                        self.done = True
                        checker.error_in(event)
                        break
                    if event is None:
                        continue
                    error = checker.error_in(event)
                    if error is not None:
                        raise error
                    if event.event != "ping":
                        events.append(event)
                        if not self.content:
                            self.content = is_content(event)
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                decoder._size += len(value) + 1
                if decoder._size > decoder._limit:
                    decoder.overflow()
                decoder._data.append(value)
            elif line[0] != 58:  # not a comment (":"), a keep-alive
                decoder.field(line)
        now = self._clock()
        pending = self._lines.pending + decoder._size
        if events or self.done or pending > self._high:
            self._last, self._high = now, pending
        elif now - self._last > self._request.timeout:
            request = self._request
            raise RequestTimeoutError(
                f"{request.method} stream sent no event for {request.timeout:g}s "
                "(keep-alives only)",
                url=request.url,
            )
        return events

    def flush(self) -> SSEEvent | None:
        """At the end of the body: the event still being assembled, if any."""
        rest = self._lines.rest()
        if rest and not self.done:
            self._decoder.feed(rest.rstrip(b"\r"))
        return self._accept(self._decoder.flush())

    def finish(self) -> None:
        """After the last event: raises if the provider's terminal frame never came."""
        self._checker.finish()

    def judge(self, events: list[SSEEvent] | None = None) -> None:
        """After the last event of a whole stream: raises :class:`Unanswered` when it
        answered nothing (``events``: what ``call()`` returns)."""
        kind = self._checker.non_answer()
        if kind is not None:
            if isinstance(events, Events):
                events.non_answer = kind
            raise Unanswered(kind, events)

    def _accept(self, event: SSEEvent | None) -> SSEEvent | None:
        if event is None:
            return None
        if event is DONE:
            self.done = True
        if self._checker.check(event):
            if not self.content:
                self.content = is_content(event)
            return event
        return None


def parse_answer(
    request: PreparedRequest, status: int, headers: Mapping[str, str], body: bytes
) -> Any:
    """What ``call()`` / ``acall()`` return for a whole body: its parsed JSON, or, for a 2xx
    answer of server-sent events (a request with ``"stream": true``), the list of its events,
    judged as :meth:`EventReader.feed` judges a stream's (an error frame, a stream cut before
    its final event raise: nothing was handed to the caller yet, so the attempt is retried;
    events that answer nothing raise :class:`Unanswered`, which the facade's breaker
    ignores)."""
    if not (200 <= status < 300 and is_sse(headers)):
        return parse_response(status, headers, body, request.url)
    reader = EventReader(request)
    found = Events(reader.feed(body))
    if not reader.done:
        last = reader.flush()
        if last is not None:
            found.append(last)
        if not reader.done:
            reader.finish()
    reader.judge(found)
    return found


def is_json(headers: Mapping[str, str]) -> bool:
    """Whether an answer's body is one JSON document (``application/json``, or ``+json`` such
    as a gateway's ``application/problem+json``; not NDJSON, not server-sent events)."""
    kind = headers.get("content-type", "").partition(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def whole_answer(request: PreparedRequest, body: bytes) -> list[SSEEvent]:
    """A 2xx JSON answer to a streaming request (a server that does not stream, or a gateway's
    error object) as the stream's one event, judged as a frame of it: an error object raises,
    where an event reader would find no event and end the stream silently."""
    if not body.strip():
        return []
    event = _new_event("message", parse_json(body), None)
    error = StreamChecker(request.url).error_in(event)
    if error is not None:
        raise error
    return [event]


def judge_whole(events: list[SSEEvent]) -> None:
    """After a stream's :func:`whole_answer` events were handed over: raises
    :class:`Unanswered` when the completion answers nothing."""
    kind = non_answer(events[0].data) if events else None
    if kind is not None:
        raise Unanswered(kind, events)
