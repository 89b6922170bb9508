"""What the requests and aiohttp drivers share: everything but the I/O.

* :func:`prepare` validates a call before anything is sent (a caller's mistake never reaches
  the breaker) and encodes the JSON body once.
* :func:`parse_response` turns status, headers and body bytes into the parsed JSON result or
  one of our errors.
* :class:`BodyLimit` bounds a body while it is read; :func:`redirect` decides whether and
  where a redirect is followed (same origin only: credentials never leave for another host).
* Server-sent events are decoded in :mod:`._sse`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from llm_circuit_breaker._judge.classify import mark_local
from llm_circuit_breaker._judge.kinds import parse_json
from llm_circuit_breaker._redact import is_secret_name, redact_url, remember_secrets
from llm_circuit_breaker.errors import (
    RequestTimeoutError,
    TransportError,
    http_status_error,
    redact_headers,
    redact_text,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "BodyLimit",
    "Inflate",
    "PreparedRequest",
    "error_type_of",
    "local_error",
    "parse_response",
    "prepare",
    "redirect",
    "transport_error",
]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # decompressed
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024  # one server-sent event, or one line of it
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A header value the HTTP clients refuse: surrounding white space or a line break (a key
# pasted with its newline). Refused here, naming the header but never showing the value.
_BAD_HEADER_VALUE = re.compile(r"^\s|\s$|[\r\n\x00]")


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A validated request: what both drivers send."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    timeout: float
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    # Where the response's headers go (the breaker's throttle): a function for the sync
    # driver, a coroutine function for the async one.
    observe: Callable[[Any], Any] | None = None
    # A streaming request read whole by call() / acall(): the longest wait for its first
    # content event (LLMCircuitBreaker's first_token_timeout).
    first_token_timeout: float | None = None

    def __repr__(self) -> str:
        headers = dict(redact_headers(self.headers))
        return f"PreparedRequest({self.method} {redact_text(self.url)}, headers={headers})"


def prepare(
    url: str,
    method: str,
    headers: Mapping[str, str] | None,
    data: Any,
    timeout: float,
    *,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    observe: Callable[[Any], Any] | None = None,
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
        if _BAD_HEADER_VALUE.search(value):
            shown = "[REDACTED]" if is_secret_name(name) else repr(value[:40])
            raise ValueError(
                f"header {name!r} has leading/trailing white space or a line break: {shown}"
            )
        merged[name] = value
    remember_secrets(merged)
    body = None
    if data is not None:
        try:
            body = json.dumps(data, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data is not JSON-serialisable: {exc}") from None
        merged.setdefault("Content-Type", "application/json")
    return PreparedRequest(
        method.upper(),
        url,
        merged,
        body,
        float(timeout),
        max_response_bytes,
        max_event_bytes,
        observe,
    )


class FirstContent:
    """``first_token_timeout`` for a streaming request whose whole SSE body is read (call /
    acall): the deadline of its first content event, judged on whole events as they come."""

    __slots__ = ("_buffer", "at", "seconds", "seen")

    def __init__(self, seconds: float) -> None:
        import time

        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.seen = False
        self._buffer = b""

    def left(self) -> float:
        import time

        return self.at - time.monotonic()

    def feed(self, chunk: bytes) -> None:
        """Take the next (decoded) chunk of the body."""
        if self.seen:
            return
        from llm_circuit_breaker._judge.content import is_content

        self._buffer += chunk
        end = max(self._buffer.rfind(b"\n\n"), self._buffer.rfind(b"\r\n\r\n"))
        if end >= 0 and is_content(self._buffer[:end]):  # whole events only
            self.seen, self._buffer = True, b""

    def late(self, exc: BaseException, request: PreparedRequest) -> RequestTimeoutError | None:
        """The deadline's error when ``exc`` (a timeout) came at it, before any content."""
        if self.seen or not isinstance(exc, RequestTimeoutError) or self.left() > 0.001:
            return None
        return RequestTimeoutError(
            f"no content within {self.seconds:g} s (first_token_timeout)", url=request.url
        )


def first_content(request: PreparedRequest) -> FirstContent | None:
    """The first-content deadline of ``request``, as it is sent (None without one)."""
    if request.first_token_timeout is None:
        return None
    return FirstContent(request.first_token_timeout)


def is_sse(headers: Mapping[str, str]) -> bool:
    """Whether a response's body is server-sent events."""
    return "text/event-stream" in headers.get("content-type", "")


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
        decoded = parse_json(body)
        raise http_status_error(status, headers, decoded, url, error_type=error_type_of(decoded))
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        snippet = redact_text(body[:80].decode("utf-8", errors="replace"))
        raise TransportError(
            f"HTTP {status} body is not valid JSON ({exc}): {snippet!r}",
            url=url,
        ) from None


class BodyLimit:
    """Collects a body while it is read; past ``limit`` bytes it raises ``TransportError`` (a
    provider fault: an endless or bomb-sized body must not fill the machine)."""

    __slots__ = ("_chunks", "_size", "limit", "url")

    def __init__(self, request: PreparedRequest) -> None:
        self.limit = request.max_response_bytes
        self.url = request.url
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> None:
        """Take the next chunk of the (decompressed) body."""
        self._size += len(chunk)
        if self._size > self.limit:
            raise TransportError(
                f"response body larger than max_response_bytes={self.limit}", url=self.url
            )
        self._chunks.append(chunk)

    def body(self) -> bytes:
        """The body read so far."""
        return b"".join(self._chunks)


_PIECE = 64 * 1024  # decoded bytes per step: a compression bomb is read in bounded pieces


class Inflate:
    """Undoes a ``gzip`` or ``deflate`` content-encoding as the body passes (the client decodes
    it again for the SDK after us), in pieces of at most 64 KiB."""

    __slots__ = ("_decoder", "_started", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        wbits = zlib.MAX_WBITS if name == "deflate" else zlib.MAX_WBITS | 16  # | 16: gzip
        self._decoder = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of ``data``."""
        if not self._started and self.name == "deflate":
            try:  # "deflate" is meant to be zlib-wrapped, but some servers send it raw
                zlib.decompressobj().decompress(data[:2])
            except zlib.error:
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        self._started = self._started or bool(data)
        while True:
            piece = self._decoder.decompress(data, _PIECE)
            data = self._decoder.unconsumed_tail
            if piece:
                yield piece
            if not data and len(piece) < _PIECE:
                return

    @property
    def complete(self) -> bool:
        """Whether the compressed stream reached its end (or never began)."""
        return self._decoder.eof or not self._started


def redirect(
    request: PreparedRequest, status: int, headers: Mapping[str, str], hops: int
) -> PreparedRequest | None:
    """The request to send next when the response is a redirect to follow, else None.

    Only same-origin redirects are followed (303, and 301/302 after a POST, become a GET
    without body; 307/308 resend the request as it was): a redirect to another origin would
    carry the credential headers there, so it is refused with ``TransportError``.
    """
    location = headers.get("Location") or headers.get("location")
    if status not in _REDIRECTS or not location:
        return None
    if hops >= MAX_REDIRECTS:
        raise TransportError(f"more than {MAX_REDIRECTS} redirects", url=request.url)
    target = urljoin(request.url, location)
    old, new = urlsplit(request.url), urlsplit(target)
    if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
        raise TransportError(
            f"redirect to another origin refused (credentials would follow): {redact_url(target)}",
            url=request.url,
        )
    keep = status in (307, 308) or (status in (301, 302) and request.method != "POST")
    if keep:
        return dataclasses.replace(request, url=target)
    headers_left = {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
    return dataclasses.replace(request, method="GET", url=target, headers=headers_left, body=None)


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
