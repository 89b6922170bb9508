"""``Watch``: an SSE body read as it passes, for its error frames, its first content event
and its final event."""

from __future__ import annotations

import math
import zlib

from llm_circuit_breaker._judge.content import is_content
from llm_circuit_breaker._judge.kinds import parse_json
from llm_circuit_breaker.http._common import Inflate

__all__ = ["Watch", "watch_for"]


class Watch:
    """Reads an SSE body as it passes: error frames, whether content has come (the first
    token), whether the final event came, and whether the answer was none.

    The SDK parses every event anyway, so the watch parses only those that can matter: the
    events up to the first with text or a tool call (reasoning comes before it), a possible
    error, a chat chunk's tool-call arguments, and a possible final one (found by a substring
    test on the raw data); the rest cost a few ``find`` tests each.
    """

    __slots__ = (
        "_checker",
        "_data",
        "_event",
        "_inflate",
        "_lines",
        "_parts",
        "_size",
        "_url",
        "content",
        "metered",
    )

    def __init__(self, url: str, inflate: Inflate | None = None) -> None:
        from llm_circuit_breaker.http._sse import LineSplitter, StreamChecker

        self._url = url
        self._inflate = inflate
        self._lines = LineSplitter(_MAX_EVENT, url)
        self._checker = StreamChecker(url)
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0
        # Set for a breaker with a token budget: events that carry ``usage`` are read too.
        self.metered = False
        # total, input, output, anthropic's cache writes and reads (apart from its input)
        self._parts: list[float | None] = [None, None, None, None, None]
        self.content = False  # whether an event with content has passed (is_content)

    def feed(self, chunk: bytes) -> BaseException | None:
        """The first provider error in ``chunk`` (as it came, encoded or not), if any."""
        if self._inflate is None:
            if (  # the common read once text has come: whole events, nothing to read
                self._checker._answered
                and chunk.endswith(b"\n\n")
                and not (self._data or self._event or self._lines._buffer or self._lines._cr)
                and self._dull(chunk)
            ):
                return None
            return self._feed(chunk)
        error = None
        try:
            for piece in self._inflate.feed(chunk):
                found = self._feed(piece)
                error = error or found
        except zlib.error as exc:  # the SDK's client fails to decode it too
            from llm_circuit_breaker.errors import TransportError

            return TransportError(f"undecodable {self._inflate.name} body: {exc}", url=self._url)
        return error

    def _feed(self, chunk: bytes) -> BaseException | None:
        if not self._checker._answered or self._lines._cr:  # up to the first text, or a CR
            return self._cut(chunk)  # ending the last chunk (its LF may start this one): cut
        if self._data or self._event or not self._lines.empty:
            # An event began in an earlier chunk: its end is read line by line, then what
            # follows it is fed again, from an event boundary.
            first = chunk.find(b"\n\n") + 2
            if first <= 1 or first == len(chunk):
                return self._cut(chunk)
            error = self._cut(chunk[:first])
            if self._data or self._event or not self._lines.empty:  # \r line ends: no cut
                rest = self._cut(chunk[first:])
            else:
                rest = self._feed(chunk[first:])
            return error or rest
        if chunk.endswith(b"\n\n"):
            return None if self._dull(chunk) else self._cut(chunk)
        # Whole events, then the start of one: the whole ones may need no cutting up.
        last = chunk.rfind(b"\n\n") + 2
        if last > 1 and self._dull(chunk[:last]):
            return self._cut(chunk[last:])
        return self._cut(chunk)

    def _dull(self, events: bytes) -> bool:
        """Whether whole ``events`` hold nothing to read: no error, no final event, finish or
        stop reason (nor anything named so), no usage to meter. A few substring searches; they are
        then not cut into lines at all. (``find``, not ``in``: ``bytes.__contains__`` first
        tries its argument as an integer and clears the error, ~0.1 us a test.)"""
        find = events.find
        return (
            len(events) <= _MAX_EVENT
            and find(b"error") < 0
            and find(b"message_") < 0  # Anthropic's message_delta (its stop reason), _stop
            and find(b"response.") < 0
            and find(b"[DONE]") < 0
            and find(b'"finish_reason":"') < 0
            and find(b'"finish_reason": "') < 0
            # a piece of a chat tool call's arguments, once a tool call has come
            and not (self._checker._calling and find(b'"arguments"') >= 0)
            and not (self.metered and find(b'"usage"') >= 0)
        )

    def _cut(self, chunk: bytes) -> BaseException | None:
        """Read ``chunk`` line by line (the first error found, if any)."""
        error = None
        for line in self._lines.feed(chunk):
            found = self._line(line)
            error = error or found
        return error

    def _line(self, line: bytes) -> BaseException | None:
        if not line:
            return self._dispatch()
        if line.startswith(b"data:"):
            value = line[5:].removeprefix(b" ")
            self._size += len(value)
            if self._size > _MAX_EVENT:
                from llm_circuit_breaker.errors import TransportError

                raise TransportError("server-sent event larger than 8 MiB", url=self._url)
            self._data.append(value)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8", errors="replace")
        return None

    def _dispatch(self) -> BaseException | None:
        event, data = self._event, b"\n".join(self._data)
        self._event, self._data, self._size = "", [], 0
        if not data and not event:
            return None
        checker = self._checker
        if not (
            not checker._answered  # every event until text or a tool call has come
            or event in _NOTABLE_EVENTS
            or data == b"[DONE]"
            or any(data.find(marker) >= 0 for marker in _NOTABLE_DATA)
            or (checker._calling and data.find(b'"arguments"') >= 0)
            or (self.metered and data.find(b'"usage"') >= 0)
        ):
            return None
        from llm_circuit_breaker.http._sse import DONE, SSEEvent

        text = data.decode("utf-8", errors="replace")
        parsed = DONE if text == "[DONE]" else SSEEvent(event or "message", parse_json(text))
        if self.metered and parsed is not DONE:
            self._meter(parsed.data)
        error = checker.error_in(parsed)
        if not self.content:  # text or a tool call is content, as reasoning is
            self.content = checker._answered or is_content(
                _Event(event or None, parsed.data if parsed is not DONE else text)
            )
        return error

    def _meter(self, data: object) -> None:
        """Keep the usage an event reports: a total (openai's last chunk, a Responses
        ``response.completed``), or input, output and prompt-cache tokens apart (anthropic's
        ``message_start`` and the cumulative counts of its ``message_delta``)."""
        if not isinstance(data, dict):
            return
        for holder in (data, data.get("message"), data.get("response")):
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                break
        else:
            return
        keys = ("total_tokens", "input_tokens", "output_tokens")
        aliases = {
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 4,
        }
        for slot, key in [*enumerate(keys), *((i, k) for k, i in aliases.items())]:
            value = usage.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    number = float(value)
                except OverflowError:  # an integer no float holds: not counted
                    continue
                if 0.0 <= number < math.inf:
                    self._parts[slot] = number

    @property
    def usage(self) -> float | None:
        """The tokens the stream's events said it used (with ``metered``), or None."""
        total, *apart = self._parts
        if total is not None:
            return total
        known = [part for part in apart if part is not None]
        return sum(known) if known else None

    @property
    def complete(self) -> bool:
        """Whether the provider's final event has passed (the SDK may stop reading there)."""
        return self._checker.ended

    def unanswered(self) -> bool:
        """Whether the stream, ended, answered nothing: no text nor tool call came (reasoning
        alone is none), its finish reason is a content filter's, or its tool-call arguments
        are not JSON (``StreamChecker.non_answer``, which never raises)."""
        return self._checker.non_answer() is not None

    def truncated(self) -> bool:
        """At the end of the body: whether the provider's final event never came."""
        if self._inflate is not None and not self._inflate.complete:
            return True  # a compressed body cut short
        rest = self._lines.rest()
        if rest:
            self._line(rest.rstrip(b"\r"))
        self._dispatch()
        return self._checker.incomplete


class _Event:
    """An event as :func:`is_content` reads it (``.event``, ``.data``)."""

    __slots__ = ("data", "event")

    def __init__(self, event: str | None, data: object) -> None:
        self.event = event
        self.data = data


_MAX_EVENT = 8 * 1024 * 1024
# Events worth parsing: errors, and the final events of each provider's streams.
_NOTABLE_EVENTS = frozenset(
    {
        "error",
        "response.failed",
        "message_delta",  # its stop reason
        "message_stop",
        "response.completed",
        "response.incomplete",
    }
)
_NOTABLE_DATA = (
    b'"error"',
    b"response.failed",
    b"message_stop",
    b'"message_delta"',  # its stop reason (a proxy may drop the event names)
    b"response.completed",
    b"response.incomplete",
    b'"finish_reason":"',
    b'"finish_reason": "',
)


def watch_for(url: str, encoding: str) -> Watch | None:
    """The watch of an SSE body sent with ``encoding`` (its ``content-encoding``); None for an
    encoding it cannot undo (br, zstd, several layers): that body goes by unwatched."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return Watch(url)
    if name in ("gzip", "x-gzip", "deflate"):
        return Watch(url, Inflate(name))
    return None
