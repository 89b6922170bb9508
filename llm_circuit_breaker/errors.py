"""The exceptions this package raises.

::

    LLMCircuitBreakerError
    ├── CircuitOpenError(name, retry_after)      a call refused without running it
    ├── HTTPStatusError(status_code, headers, body, url)
    │   ├── RateLimitError                        429
    │   └── ServerError                           5xx, Anthropic's 529 included
    └── TransportError                            refused/reset connection, DNS, bad body
        └── RequestTimeoutError                   also a builtin ``TimeoutError``

Every error keeps its context as attributes, and neither ``str()`` nor ``repr()`` ever shows a
credential: header values whose names look like credentials are replaced before they are
stored, and key-looking tokens in URLs and messages are masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from requests.structures import CaseInsensitiveDict

from llm_circuit_breaker._hints import retry_after_from_headers

__all__ = [
    "CircuitOpenError",
    "HTTPStatusError",
    "LLMCircuitBreakerError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "TransportError",
    "http_status_error",
    "redact_headers",
    "redact_text",
]

REDACTED = "[REDACTED]"
_SECRET_NAME = re.compile(r"key|token|secret|auth|password|cookie|signature", re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"(?i)(bearer\s+)[^\s,;\"']+"  # Authorization: Bearer <token>
    r"|\b(sk-[\w-]{6,}|sk-ant-[\w-]{6,}|AIza[\w-]{20,})"  # OpenAI / Anthropic / Google keys
    r"|([?&](?:api[_-]?key|key|token|access_token|sig)=)[^&#\s]+"  # keys in query strings
)
_MAX_BODY_IN_MESSAGE = 300


def redact_text(text: str) -> str:
    """Mask bearer tokens, provider API keys and credential query parameters in ``text``."""

    def mask(match: re.Match[str]) -> str:
        prefix = match.group(1) or match.group(3) or ""
        return prefix + REDACTED

    return _SECRET_VALUE.sub(mask, text)


def redact_headers(headers: Mapping[str, str] | None) -> CaseInsensitiveDict[str]:
    """Return a case-insensitive copy of ``headers`` with credential values replaced."""
    clean: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    for name, value in (headers or {}).items():
        clean[name] = REDACTED if _SECRET_NAME.search(name) else str(value)
    return clean


class LLMCircuitBreakerError(Exception):
    """Base class of every error this package raises."""


class CircuitOpenError(LLMCircuitBreakerError):
    """The circuit is open (or its probe slots are taken): the call was refused, not run.

    ``retry_after`` is the number of seconds until a probe may be admitted, or ``None`` while
    the circuit is held open by hand (:meth:`CircuitBreaker.force_open`).
    """

    # Failing fast is a hot path: the attributes live in ``args`` so that the breaker can build
    # the error with BaseException's own C code (``refused``), and the message is made only
    # when someone reads it.
    args: tuple[str, float | None]

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        super().__init__(name, retry_after)

    @classmethod
    def refused(cls, name: str, retry_after: float | None) -> CircuitOpenError:
        """Build the error without running ``__init__`` (what a refused call raises)."""
        return cls.__new__(cls, name, retry_after)

    @property
    def name(self) -> str:
        """The name of the circuit that refused the call."""
        return self.args[0]

    @property
    def retry_after(self) -> float | None:
        """Seconds until a probe may be admitted; ``None`` while held open."""
        return self.args[1]

    def __str__(self) -> str:
        if self.retry_after is None:
            return f"circuit {self.name!r} is held open"
        return f"circuit {self.name!r} is open; retry after {self.retry_after:.3f}s"

    def __repr__(self) -> str:
        return f"CircuitOpenError(name={self.name!r}, retry_after={self.retry_after!r})"


class HTTPStatusError(LLMCircuitBreakerError):
    """A provider answered with an error status (or an error event inside a stream).

    ``body`` is the parsed JSON body when there was one, else the text. ``retry_after`` is the
    server's hint in seconds (``retry-after-ms``, then ``retry-after``), ``None`` without one.
    ``error_type`` is the provider's machine-readable error type when the body carries one
    (``rate_limit_error``, ``overloaded_error``, ``insufficient_quota`` ...).
    """

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        url: str | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers = redact_headers(headers)
        self.body = body
        self.url = redact_text(url) if url else url
        self.error_type = error_type
        self.retry_after = retry_after_from_headers(self.headers)
        super().__init__(status_code)

    def __str__(self) -> str:
        where = f" from {self.url}" if self.url else ""
        detail = _describe_body(self.body)
        return f"HTTP {self.status_code}{where}" + (f": {detail}" if detail else "")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code}, url={self.url!r}, "
            f"error_type={self.error_type!r}, retry_after={self.retry_after!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.status_code, dict(self.headers), self.body, self.url)
        return (_rebuild_status_error, (type(self), args, self.error_type))


class RateLimitError(HTTPStatusError):
    """HTTP 429: the provider throttles this key (or, with a quota code, has cut it off)."""


class ServerError(HTTPStatusError):
    """HTTP 5xx, including Anthropic's 529 ``overloaded_error``."""


class TransportError(LLMCircuitBreakerError):
    """The exchange itself failed: refused or reset connection, DNS, a truncated or bad body."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = redact_text(url) if url else url
        super().__init__(redact_text(message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, url={self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transport_error, (type(self), str(self), self.url))


class RequestTimeoutError(TransportError, TimeoutError):
    """An attempt took longer than its timeout."""


def http_status_error(
    status_code: int,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    url: str | None = None,
    *,
    error_type: str | None = None,
) -> HTTPStatusError:
    """Build the most specific :class:`HTTPStatusError` subclass for ``status_code``."""
    cls = HTTPStatusError
    if status_code == 429:
        cls = RateLimitError
    elif status_code >= 500:
        cls = ServerError
    return cls(status_code, headers, body, url, error_type=error_type)


def _describe_body(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        text = str(message) if message is not None else str(body)
    else:
        text = "" if body is None else str(body)
    text = " ".join(text.split())
    if len(text) > _MAX_BODY_IN_MESSAGE:
        text = text[:_MAX_BODY_IN_MESSAGE] + "..."
    return redact_text(text)


def _rebuild_status_error(
    cls: type[HTTPStatusError], args: tuple[Any, ...], error_type: str | None
) -> HTTPStatusError:
    return cls(*args, error_type=error_type)


def _rebuild_transport_error(
    cls: type[TransportError], message: str, url: str | None
) -> TransportError:
    return cls(message, url=url)
