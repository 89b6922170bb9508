"""The exceptions this package raises.

::

    LLMCircuitBreakerError
    ├── CircuitOpenError(name, retry_after, reason)   a call refused without running it
    ├── ThrottledError(name, retry_after)             over the rate limit: wait retry_after
    │   └── BudgetExceededError(name, retry_after, spent, limit)  token budget spent
    ├── FallbacksExhaustedError(errors)               every fallback target failed or refused
    │                                                 (also an ExceptionGroup on 3.11+)
    ├── InvalidResponseError(kind, response)          a 200 that is no answer, retries spent
    ├── HTTPStatusError(status_code, headers, body, url)
    │   ├── RateLimitError                            429
    │   └── ServerError                               5xx, Anthropic's 529 included
    └── TransportError                                refused/reset connection, DNS, bad body
        ├── RequestTimeoutError                       also a builtin ``TimeoutError``
        └── IncompleteStreamError                     a stream cut before its final event

Every error keeps its context as attributes, and neither ``str()`` nor ``repr()`` ever shows a
credential: header values whose names look like credentials are replaced before they are
stored, and secrets in URLs and messages are masked (see :mod:`._redact`).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from llm_circuit_breaker import _redact

_shown = _redact.shown  # a name in a message or repr: credentials masked

__all__ = [
    "BudgetExceededError",
    "CircuitOpenError",
    "FallbacksExhaustedError",
    "HTTPStatusError",
    "IncompleteStreamError",
    "InvalidResponseError",
    "LLMCircuitBreakerError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "ThrottledError",
    "TransportError",
    "http_status_error",
    "redact_headers",
    "redact_text",
]

_MAX_BODY_IN_MESSAGE = 300


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
    args: tuple[str, float | None, str]

    def __init__(self, name: str, retry_after: float | None = None, reason: str = "") -> None:
        super().__init__(name, retry_after, reason)

    @classmethod
    def refused(cls, name: str, retry_after: float | None, reason: str = "") -> CircuitOpenError:
        """Build the error without running ``__init__`` (what a refused call raises)."""
        return cls.__new__(cls, name, retry_after, reason)

    @property
    def name(self) -> str:
        """The name of the circuit that refused the call."""
        return self.args[0]

    @property
    def retry_after(self) -> float | None:
        """Seconds until a probe may be admitted; ``None`` while held open."""
        return self.args[1]

    @property
    def reason(self) -> str:
        """Why the circuit opened ("5 consecutive failures", "quota exhausted: ...")."""
        return self.args[2] if len(self.args) > 2 else ""

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        if self.retry_after is None:
            return f"circuit {_shown(self.name)!r} is held open{why}"
        name = _shown(self.name)
        return f"circuit {name!r} is open{why}; retry after {self.retry_after:.3f}s"

    def __repr__(self) -> str:
        return (
            f"CircuitOpenError(name={_shown(self.name)!r}, "
            f"retry_after={self.retry_after!r}, reason={self.reason!r})"
        )


class ThrottledError(LLMCircuitBreakerError):
    """Over the rate limit: the next free slot is ``retry_after`` seconds away, further than
    the caller may wait (``throttle_max_wait``). The call was not made."""

    def __init__(self, name: str, retry_after: float, reason: str = "rate_limit") -> None:
        super().__init__(name, retry_after)
        self.name = name
        self.retry_after = retry_after
        # "rate_limit" (the throttle), "concurrency" (max_concurrent), "retry_budget" (an SDK's
        # retry the retry budget cannot pay) or "token_budget" (BudgetExceededError)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after, self.reason))

    def __str__(self) -> str:
        if self.reason == "concurrency":
            return (
                f"circuit {_shown(self.name)!r} has its max_concurrent calls in flight; "
                f"retry in {self.retry_after:.3f}s"
            )
        if self.reason == "retry_budget":
            return (
                f"circuit {_shown(self.name)!r} refused a retry: retry budget exhausted; "
                f"retry in {self.retry_after:.3f}s"
            )
        name = _shown(self.name)
        return f"circuit {name!r} is throttled; a slot is free in {self.retry_after:.3f}s"

    def __repr__(self) -> str:
        return (
            f"ThrottledError(name={_shown(self.name)!r}, retry_after={self.retry_after!r}, "
            f"reason={self.reason!r})"
        )


class BudgetExceededError(ThrottledError):
    """The breaker's token budget (``token_budget`` per ``token_budget_window``) is spent:
    the call was not made and is no failure of the provider; ``retry_after`` seconds until
    the window ends. ``with_fallbacks`` and ``with_pool`` move on to their next target."""

    def __init__(self, name: str, retry_after: float, spent: float, limit: float) -> None:
        LLMCircuitBreakerError.__init__(self, name, retry_after, spent, limit)
        self.name = name
        self.retry_after = retry_after
        self.reason = "token_budget"
        self.spent = spent
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after, self.spent, self.limit))

    def __str__(self) -> str:
        return (
            f"circuit {_shown(self.name)!r} spent its token budget ({self.spent:.0f} of "
            f"{self.limit:.0f} tokens); it resets in {self.retry_after:.3f}s"
        )

    def __repr__(self) -> str:
        return (
            f"BudgetExceededError(name={_shown(self.name)!r}, "
            f"retry_after={self.retry_after!r}, spent={self.spent!r}, limit={self.limit!r})"
        )


class InvalidResponseError(LLMCircuitBreakerError):
    """A completion that came back but is no answer, still so when the retries ran out.

    ``kind`` names what is wrong (``"empty"``, ``"length_empty"``, ``"content_filter"``,
    ``"invalid_tool_arguments"``, see :mod:`llm_circuit_breaker.results`; ``"retry_on_result"``
    when a ``retry_on_result=`` predicate rejected an answer of no known kind) and
    ``response`` is the last response itself. Neither ``str()`` nor ``repr()`` shows the
    response: it may be long, and it is the caller's data.
    """

    def __init__(self, kind: str, response: Any = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.response = response

    def __str__(self) -> str:
        what = _NON_ANSWERS.get(self.kind, "rejected by retry_on_result")
        return f"invalid response ({self.kind}): {what}"

    def __repr__(self) -> str:
        shape = type(self.response).__name__
        return f"InvalidResponseError(kind={self.kind!r}, response=<{shape}>)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.response))


_NON_ANSWERS = {
    "empty": "no text and no tool call",
    "length_empty": "the token limit was reached before any text or tool call",
    "content_filter": "stopped by a content filter",
    "invalid_tool_arguments": "tool-call arguments that are not valid JSON",
}


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
        self.status_code = status_code = _status(status_code)
        self.headers = _redact.redact_headers(headers)
        self.body = body
        self.url = _redact.redact_url(url) if url else url
        self.error_type = error_type
        from llm_circuit_breaker._core.headers import retry_after_from_headers

        self.retry_after = retry_after_from_headers(self.headers)
        super().__init__(status_code)

    def __str__(self) -> str:
        where = f" from {self.url}" if self.url else ""
        detail = _describe_body(self.body)
        return f"HTTP {self.status_code}{where}" + (f": {detail}" if detail else "")

    def __repr__(self) -> str:
        kind = self.error_type
        if isinstance(kind, str):  # the provider's word: a hostile one may echo a key
            kind = _redact.redact_text(kind)
        return (
            f"{type(self).__name__}(status_code={self.status_code}, url={self.url!r}, "
            f"error_type={kind!r}, retry_after={self.retry_after!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.status_code, dict(self.headers), self.body, self.url)
        return (_rebuild_status_error, (type(self), args, self.error_type))


class RateLimitError(HTTPStatusError):
    """HTTP 429: the provider throttles this key (or, with a quota code, has cut it off).
    ``status_code`` defaults to 429."""

    def __init__(
        self,
        status_code: int = 429,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        url: str | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        super().__init__(status_code, headers, body, url, error_type=error_type)


class ServerError(HTTPStatusError):
    """HTTP 5xx, including Anthropic's 529 ``overloaded_error``. ``status_code`` defaults to
    500."""

    def __init__(
        self,
        status_code: int = 500,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        url: str | None = None,
        *,
        error_type: str | None = None,
    ) -> None:
        super().__init__(status_code, headers, body, url, error_type=error_type)


def _status(value: Any) -> int:
    """An HTTP status as an int: an integer of any kind (``http.HTTPStatus``, numpy's), a
    whole float, or a string of three ASCII digits (``"503"``); anything else is a
    ``ValueError`` naming it."""
    if value.__class__ is int:
        return value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if isinstance(value, str):
        digits = value.strip()
        if len(digits) == 3 and digits.isascii() and digits.isdigit():
            return int(digits)
    elif isinstance(value, float):
        if value.is_integer():
            return int(value)
    elif not isinstance(value, bool) and hasattr(value, "__index__"):
        return operator.index(value)
    raise ValueError(f"status_code must be an HTTP status such as 429, got {value!r}")


class TransportError(LLMCircuitBreakerError):
    """The exchange itself failed: refused or reset connection, DNS, a truncated or bad body."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = _redact.redact_url(url) if url else url
        super().__init__(_redact.redact_text(message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, url={self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transport_error, (type(self), str(self), self.url))


class RequestTimeoutError(TransportError, TimeoutError):
    """An attempt took longer than its timeout."""


class IncompleteStreamError(TransportError):
    """A stream ended before the provider's final event (an OpenAI chat stream without
    ``[DONE]`` or a finish reason, an Anthropic one without ``message_stop``, a Responses one
    without ``response.completed``): the answer is cut short."""


def _exhausted_message(errors: Sequence[BaseException]) -> str:
    parts = "; ".join(f"{type(e).__name__}: {_printed(e, str)[:200]}" for e in errors)
    return f"all {len(errors)} fallback targets failed: {parts}"


def _printed(error: BaseException, how: Any) -> str:
    """``str()`` or ``repr()`` of ``error`` with credentials masked; never raises."""
    try:
        return _redact.redact_text(how(error))
    except Exception:
        return f"<{type(error).__name__}: {how.__name__}() raised>"


def _exhausted_repr(error: Any) -> str:
    inner = ", ".join(_printed(e, repr) for e in error.errors)
    return f"{type(error).__name__}({str(error)!r}, [{inner}])"


if sys.version_info >= (3, 11):

    class FallbacksExhaustedError(LLMCircuitBreakerError, ExceptionGroup):  # noqa: F821
        """Every target of ``with_fallbacks`` failed or was refused; ``errors`` holds each
        target's error in order (also an ``ExceptionGroup``, so ``except*`` works)."""

        def __new__(cls, errors: Sequence[Exception]) -> FallbacksExhaustedError:
            return super().__new__(cls, _exhausted_message(errors), list(errors))

        def __init__(self, errors: Sequence[Exception]) -> None:
            super().__init__(_exhausted_message(errors), list(errors))

        @property
        def errors(self) -> tuple[Exception, ...]:
            """Each target's error, in the order the targets were tried."""
            return tuple(self.exceptions)

        def derive(self, excs: Sequence[Exception]) -> FallbacksExhaustedError:
            return FallbacksExhaustedError(excs)

        def __reduce__(self) -> tuple[Any, ...]:
            # pickled as made (a process pool's or a task queue's error): from its errors
            return (self.__class__, (list(self.exceptions),), self.__dict__ or None)

        def __str__(self) -> str:
            return _exhausted_message(self.exceptions)

        def __repr__(self) -> str:
            return _exhausted_repr(self)

else:

    class FallbacksExhaustedError(LLMCircuitBreakerError):
        """Every target of ``with_fallbacks`` failed or was refused; ``errors`` holds each
        target's error in order."""

        def __init__(self, errors: Sequence[Exception]) -> None:
            super().__init__(_exhausted_message(errors))
            self.exceptions = tuple(errors)

        @property
        def errors(self) -> tuple[Exception, ...]:
            """Each target's error, in the order the targets were tried."""
            return self.exceptions

        def __repr__(self) -> str:
            return _exhausted_repr(self)

        def __reduce__(self) -> tuple[Any, ...]:
            # pickled as made (a process pool's or a task queue's error): from its errors
            state = {k: v for k, v in self.__dict__.items() if k != "exceptions"}
            return (self.__class__, (list(self.exceptions),), state or None)


def http_status_error(
    status_code: int,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    url: str | None = None,
    *,
    error_type: str | None = None,
) -> HTTPStatusError:
    """Build the most specific :class:`HTTPStatusError` subclass for ``status_code``."""
    status_code = _status(status_code)
    cls: type[HTTPStatusError] = HTTPStatusError
    if status_code == 429:
        cls = RateLimitError
    elif status_code >= 500:
        cls = ServerError
    return cls(status_code, headers, body, url, error_type=error_type)


def _describe_body(body: Any) -> str:
    try:
        return _body_text(body)
    except Exception:  # a body whose parts cannot be printed: say so, never raise from str()
        return "<body unavailable: str() raised>"


def _body_text(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        text = str(message) if message is not None else str(body)
    else:
        text = "" if body is None else str(body)
    text = " ".join(text[: _MAX_BODY_IN_MESSAGE * 4].split())
    if len(text) > _MAX_BODY_IN_MESSAGE:
        text = text[:_MAX_BODY_IN_MESSAGE] + "..."
    return _redact.redact_text(text)


def _rebuild_status_error(
    cls: type[HTTPStatusError], args: tuple[Any, ...], error_type: str | None
) -> HTTPStatusError:
    return cls(*args, error_type=error_type)


def _rebuild_transport_error(
    cls: type[TransportError], message: str, url: str | None
) -> TransportError:
    return cls(message, url=url)


redact_headers = _redact.redact_headers
redact_text = _redact.redact_text
