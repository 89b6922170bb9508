"""What the requests and aiohttp drivers share: everything but the I/O.

* :func:`prepare` validates a call before anything is sent (a caller's mistake never reaches
  the breaker) and encodes the JSON body once.
* :func:`parse_response` turns status, headers and body bytes into the parsed JSON result or
  one of our errors.
* :class:`SSEDecoder` is fed the lines of a server-sent-event stream and emits
  :class:`SSEEvent` objects; :class:`StreamChecker` turns provider error frames into errors and
  notices a stream that ended before its terminal frame.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from llm_circuit_breaker._classify import classify_response, mark_local
from llm_circuit_breaker.errors import (
    HTTPStatusError,
    RequestTimeoutError,
    TransportError,
    http_status_error,
    redact_headers,
    redact_text,
)

__all__ = [
    "DONE",
    "EventReader",
    "PreparedRequest",
    "SSEDecoder",
    "SSEEvent",
    "StreamChecker",
    "parse_response",
    "prepare",
    "local_error",
    "transport_error",
]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A validated request: what both drivers send."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    timeout: float

    def __repr__(self) -> str:
        headers = dict(redact_headers(self.headers))
        return f"PreparedRequest({self.method} {redact_text(self.url)}, headers={headers})"


def prepare(
    url: str,
    method: str,
    headers: Mapping[str, str] | None,
    data: Any,
    timeout: float,
) -> PreparedRequest:
    """Validate a call and encode its JSON body; ``ValueError`` / ``TypeError`` name the problem."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be an absolute http(s) URL, got {redact_text(url)!r}")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(_METHODS))}, got {method!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    merged = {"Accept": "application/json"}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be str, got {name!r}")
        merged[name] = value
    body = None
    if data is not None:
        try:
            body = json.dumps(data, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data is not JSON-serialisable: {exc}") from None
        merged.setdefault("Content-Type", "application/json")
    return PreparedRequest(method.upper(), url, merged, body, float(timeout))


def _decode(body: bytes) -> Any:
    """The body as JSON when it parses, else as text."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def error_type_of(body: Any) -> str | None:
    """The provider's machine-readable error type in a parsed error body, if any."""
    if not isinstance(body, dict):
        return None
    inner = body.get("error", body)
    if isinstance(inner, dict):
        for key in ("type", "code", "status"):
            value = inner.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def parse_response(status: int, headers: Mapping[str, str], body: bytes, url: str) -> Any:
    """The parsed JSON of a 2xx response; an :class:`HTTPStatusError` for anything else."""
    if not 200 <= status < 300:
        decoded = _decode(body)
        raise http_status_error(status, headers, decoded, url, error_type=error_type_of(decoded))
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError as exc:
        snippet = redact_text(body[:80].decode("utf-8", errors="replace"))
        raise TransportError(
            f"HTTP {status} body is not valid JSON ({exc}): {snippet!r}",
            url=url,
        ) from None


@dataclasses.dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: ``data`` is parsed JSON, or the raw string when it is not JSON."""

    event: str
    data: Any
    id: str | None = None


DONE = SSEEvent("done", "[DONE]")  # OpenAI's end-of-stream marker; never yielded


class SSEDecoder:
    """Assembles server-sent events from lines (without their line endings)."""

    __slots__ = ("_data", "_event", "_id")

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line; return an event when a blank line completes one."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment, used as a keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        return None

    def flush(self) -> SSEEvent | None:
        """Emit the event being assembled, if any (at a blank line or the end of the stream)."""
        if not self._data and self._event is None:
            return None
        raw = "\n".join(self._data)
        event = self._event or "message"
        self._event, self._data = None, []
        if raw == "[DONE]":
            return DONE
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = raw
        return SSEEvent(event, data, self._id)


# Provider streams with a terminal frame: a stream that ends without it was cut off.
_TERMINAL = {"message_stop", "response.completed", "response.incomplete", "done"}


class StreamChecker:
    """Raises provider error frames as our errors and notices a truncated stream."""

    __slots__ = ("_needs_end", "_url")

    def __init__(self, url: str) -> None:
        self._url = url
        self._needs_end = False

    def check(self, event: SSEEvent) -> bool:
        """Whether to hand ``event`` to the caller; raises for an error frame."""
        data = event.data
        kind = data.get("type") if isinstance(data, dict) else None
        if (
            event.event == "error"
            or kind == "error"
            or (isinstance(data, dict) and "error" in data)
        ):
            raise self._error(data)
        if event.event == "response.failed" or kind == "response.failed":
            response = data.get("response") if isinstance(data, dict) else None
            raise self._error(response if isinstance(response, dict) else data)
        name = kind if isinstance(kind, str) else event.event
        if name in ("message_start", "response.created") or (
            isinstance(data, dict) and data.get("object") == "chat.completion.chunk"
        ):
            self._needs_end = True
        if event is DONE or name in _TERMINAL:
            self._needs_end = False
        return event is not DONE and event.event != "ping"

    def finish(self) -> None:
        """Call at the end of the stream: raises if the provider's terminal frame never came."""
        if self._needs_end:
            raise TransportError("stream ended before its final event", url=self._url)

    def _error(self, payload: Any) -> HTTPStatusError:
        status = classify_response(200, None, payload).status or 500
        return http_status_error(
            status, None, payload, self._url, error_type=error_type_of(payload)
        )


class EventReader:
    """What a driver does with each raw line of an SSE body: decode, check, and say when the
    provider's stream is over. Both drivers loop over their lines and hand them here."""

    __slots__ = ("_checker", "_decoder", "done")

    def __init__(self, url: str) -> None:
        self._decoder = SSEDecoder()
        self._checker = StreamChecker(url)
        self.done = False  # [DONE] seen: stop reading

    def feed(self, raw: bytes) -> SSEEvent | None:
        """The event to yield for this line, if any (raises for a provider error frame)."""
        return self._accept(
            self._decoder.feed(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        )

    def flush(self) -> SSEEvent | None:
        """At the end of the body: the event still being assembled, if any."""
        return self._accept(self._decoder.flush())

    def finish(self) -> None:
        """After the last event: raises if the provider's terminal frame never came."""
        self._checker.finish()

    def _accept(self, event: SSEEvent | None) -> SSEEvent | None:
        if event is None:
            return None
        if event is DONE:
            self.done = True
        return event if self._checker.check(event) else None


def transport_error(
    request: PreparedRequest, exc: BaseException, *, timed_out: bool
) -> TransportError:
    """Our error for an HTTP client's timeout or connection failure (chain ``exc`` to it)."""
    if timed_out:
        return RequestTimeoutError(
            f"{request.method} timed out after {request.timeout:g}s: {type(exc).__name__}",
            url=request.url,
        )
    return TransportError(f"{request.method} failed: {type(exc).__name__}: {exc}", url=request.url)


def local_error(exc: BaseException) -> BaseException:
    """An error of this process around the call (a closed event loop, an invalid header
    value, a value the HTTP client cannot take): raised as it is, never retried nor counted."""
    return mark_local(exc)
