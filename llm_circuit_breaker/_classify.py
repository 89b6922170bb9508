"""What an exception means: one pure classification shared by the breaker and the retries.

Exceptions are probed by attributes and class names, never by importing an SDK: ours, the
openai and anthropic SDKs (1.x to 3.x), litellm, google-genai, httpx/httpx2, requests and
aiohttp all carry a status (``status_code``, ``status``, ``code`` or ``response.…``), headers
(``response.headers`` or ``headers``) and often a JSON body (``body``, ``details`` or
``response.json()``). The chain of ``__cause__`` / ``__context__`` is walked so that an SDK
error wrapping an httpx timeout is still a timeout. Every probe is guarded: httpx's
``.request`` raises when unset and ``.json()`` raises on a body that was not read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from llm_circuit_breaker._hints import (
    parse_retry_after,
    retry_after_from_headers,
    should_retry_from_headers,
)
from llm_circuit_breaker._kinds import (
    CONTEXT_CODES,
    CONTEXT_TEXT,
    NOT_PROVIDER_FAILURES,
    OVERLOADED_CODES,
    POLICY_CODES,
    QUOTA_CODES,
    RATE_CODES,
    SERVER_CODES,
    STREAM_ERROR_STATUS,
    TRANSPORT_KINDS,
    WAIT_TEXT,
    Classification,
    ErrorKind,
    error_object_of,
    kind_from_status,
    listed,
    message_of,
    per_day_quota,
)
from llm_circuit_breaker.errors import TransportError

__all__ = [
    "response_headers",
    "NOT_PROVIDER_FAILURES",
    "STREAM_ERROR_STATUS",
    "TRANSPORT_KINDS",
    "Classification",
    "ErrorKind",
    "classify",
    "classify_response",
    "mark_local",
]


# Class names (anywhere in an exception's MRO) that mean a transport failure. Timeouts are
# checked first: APITimeoutError subclasses APIConnectionError, ServerTimeoutError subclasses
# ServerConnectionError, and requests' ConnectTimeout is both a ConnectionError and a Timeout.
_POOL_NAMES = frozenset({"PoolTimeout"})
_TIMEOUT_NAMES = frozenset(
    {
        "TimeoutException",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "APITimeoutError",
        "Timeout",
        "ServerTimeoutError",
        "ConnectionTimeoutError",
        "SocketTimeoutError",
        "TimeoutError",
        "RequestTimeoutError",
    }
)
_CONNECTION_NAMES = frozenset(
    {
        "ConnectError",
        "NetworkError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "ProtocolError",
        "ProxyError",
        "APIConnectionError",
        "ConnectionError",
        "ChunkedEncodingError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "HttpProcessingError",
        "TransportError",
        "IncompleteRead",
        "TooManyRedirects",
    }
)
# litellm gives these a made-up status (500, 408): trust the class, not the number.
_SYNTHETIC_STATUS_NAMES = frozenset({"APIConnectionError", "APITimeoutError"})
# aiohttp's HTTP parser errors carry a ``code`` (400) for the server side of aiohttp; on a
# client they mean the response was cut or malformed, a transport failure.
# A redirect loop carries the last 3xx, which says nothing about the provider's health either.
_NO_STATUS_NAMES = frozenset({"HttpProcessingError", "ClientPayloadError", "TooManyRedirects"})


_CACHE = "_llm_circuit_breaker_facts"


def classify(exc: BaseException) -> Classification:
    """Classify ``exc`` (an error of ours, of an SDK or of an HTTP client) for retry and breaker.

    Never raises, whatever the exception carries. The answer is kept on the exception, so one
    failed attempt is classified once however many layers (breaker, retry, fallbacks) ask.
    """
    try:
        cached = exc.__dict__.get(_CACHE)
    except Exception:
        cached = None
    if isinstance(cached, Classification):
        return cached
    try:
        found = _classify(exc)
    except Exception:  # a hostile attribute slipped past the guards: say nothing, never crash
        found = Classification(ErrorKind.OTHER)
    _remember(exc, found)
    return found


def mark_local(exc: BaseException) -> BaseException:
    """Record that ``exc`` is this process's own mistake: never retried, never counted."""
    _remember(exc, Classification(ErrorKind.LOCAL))
    return exc


def _remember(exc: BaseException, found: Classification) -> None:
    try:
        setattr(exc, _CACHE, found)
    except Exception:  # an exception class with __slots__ or a frozen __setattr__
        pass


def classify_response(status: int, headers: Any, body: Any) -> Classification:
    """Classify an HTTP response (or an error event, ``status`` 200) by status, headers, body."""
    try:
        err = error_object_of(body)
        if status == 200 or _http_status(status) is None:
            kind = _kind_from_codes(None, err) or ErrorKind.SERVER
            return Classification(
                kind,
                status=STREAM_ERROR_STATUS.get(kind, 500),
                retry_after=_body_hint(None, err),
                error_type=_first_code(None, err),
            )
        return _from_parts(status, headers, err, None)
    except Exception:
        return Classification(ErrorKind.SERVER if status >= 500 else ErrorKind.CLIENT, status)


def _classify(exc: BaseException) -> Classification:
    if isinstance(exc, TransportError):  # ours: the class says it all, whatever it wraps
        timed_out = isinstance(exc, TimeoutError)
        return Classification(ErrorKind.TIMEOUT if timed_out else ErrorKind.CONNECTION)
    chain = list(_chain(exc))
    for candidate in chain:
        status = _status(candidate)
        if status is not None:
            return _from_parts(status, _headers(candidate), _error_object(candidate), candidate)
    for candidate in chain:
        body = _error_object(candidate)
        kind = _kind_from_codes(candidate, body)
        if kind is not None:  # an error event inside a stream, reported with status 200 or none
            return Classification(
                kind,
                status=STREAM_ERROR_STATUS.get(kind, 500),
                retry_after=_body_hint(candidate, body),
                error_type=_first_code(candidate, body),
            )
    for candidate in reversed(chain):  # the innermost transport error says most
        kind = _transport_kind(candidate)
        if kind is not None:
            return Classification(kind)
    return Classification(ErrorKind.OTHER)


# -- walking the chain --------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if id(current) in seen or len(seen) > 32:
            continue
        seen.add(id(current))
        yield current
        nested = _nested(current)
        cause = current.__cause__
        nested.append(cause if cause is not None else current.__context__)
        stack.extend(e for e in nested if isinstance(e, BaseException))


def _nested(exc: BaseException) -> list[BaseException | None]:
    last_attempt = _attr(exc, "last_attempt")  # tenacity.RetryError
    if last_attempt is not None and type(exc).__name__ == "RetryError":
        try:
            return [last_attempt.exception()]
        except Exception:
            return []
    group = _attr(exc, "exceptions")  # ExceptionGroup (3.11+), matched by shape
    if isinstance(group, tuple) and "BaseExceptionGroup" in _mro_names(exc):
        return list(group[:32])
    return []


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # httpx's .request raises RuntimeError when unset
        return None


def _mro_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


# -- HTTP errors --------------------------------------------------------------------------


def _http_status(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a response the exception carries; never a parser's ``code``."""
    names = _mro_names(exc)
    if names & _SYNTHETIC_STATUS_NAMES or names & _NO_STATUS_NAMES:
        return None
    response = _attr(exc, "response")
    # google-genai's APIError carries the status as an int ``code`` beside a str ``status``.
    genai = isinstance(_attr(exc, "status"), str) and _attr(exc, "details") is not None
    for value in (
        _attr(exc, "status_code"),
        _attr(exc, "status"),  # aiohttp ClientResponseError (0 when unknown)
        _attr(exc, "code") if genai else None,
        _attr(response, "status_code") if response is not None else None,
        _attr(response, "status") if response is not None else None,
    ):
        status = _http_status(value)
        if status is not None:
            return None if status == 200 else status  # 200: an error event inside a stream
    return None


def response_headers(exc: BaseException) -> Any:
    """The HTTP response headers an error carries (or one it was raised from); None if none."""
    for each in _chain(exc):
        headers = _headers(each)
        if headers is not None:
            return headers
    return None


def _headers(exc: BaseException) -> Any:
    response = _attr(exc, "response")
    for candidate in (
        _attr(response, "headers") if response is not None else None,
        _attr(exc, "headers"),
        _attr(exc, "litellm_response_headers"),
    ):
        if candidate is not None and _attr(candidate, "get") is not None:
            return candidate
    return None


def _body(exc: BaseException) -> Any:
    for name in ("body", "details"):
        value = _attr(exc, name)
        if isinstance(value, (dict, str)):
            return value
    response = _attr(exc, "response")
    if response is not None:
        try:
            return response.json()
        except Exception:
            return None
    return None


def _error_object(exc: BaseException) -> dict[str, Any]:
    """The provider's error object: ``body["error"]`` when present, else the body itself."""
    return error_object_of(_body(exc))


def _codes(exc: BaseException | None, err: Mapping[str, Any]) -> list[str]:
    details = err.get("details")
    values = [err.get("type"), err.get("code"), err.get("status")]
    if isinstance(details, Mapping):
        values.append(details.get("error_code"))
    if exc is not None:
        values += [_attr(exc, "type"), _attr(exc, "code"), _attr(exc, "error_type")]
        status = _attr(exc, "status")
        if isinstance(status, str):
            values.append(status)
    return [v.lower()[:100] for v in values if isinstance(v, str) and v]


def _first_code(exc: BaseException | None, err: Mapping[str, Any]) -> str | None:
    codes = _codes(exc, err)
    return codes[0] if codes else None


def _kind_from_codes(exc: BaseException | None, err: Mapping[str, Any]) -> ErrorKind | None:
    codes = set(_codes(exc, err))
    if codes & QUOTA_CODES or per_day_quota(err):
        return ErrorKind.QUOTA
    if codes & CONTEXT_CODES or CONTEXT_TEXT.search(message_of(err)):
        return ErrorKind.CONTEXT_LENGTH
    if codes & POLICY_CODES:
        return ErrorKind.CONTENT_POLICY
    if codes & OVERLOADED_CODES:
        return ErrorKind.OVERLOADED
    if codes & RATE_CODES or err.get("code") == 429 or err.get("code") == "429":
        return ErrorKind.RATE_LIMIT
    if codes & SERVER_CODES:
        return ErrorKind.SERVER
    return None


def _from_parts(
    status: int, headers: Any, err: Mapping[str, Any], exc: BaseException | None
) -> Classification:
    hint = retry_after_from_headers(headers)
    return Classification(
        kind_from_status(status, _kind_from_codes(exc, err)),
        status=status,
        retry_after=hint if hint is not None else _body_hint(exc, err),
        should_retry=should_retry_from_headers(headers),
        error_type=_first_code(exc, err),
    )


def _body_hint(exc: BaseException | None, err: Mapping[str, Any]) -> float | None:
    """Gemini's ``RetryInfo.retryDelay``, else "try again in 5.2s" in the message."""
    for detail in listed(err.get("details")):
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = parse_retry_after(str(detail.get("retryDelay", "")).rstrip("s"))
            if delay is not None:
                return delay
    text = message_of(err) or (_attr(exc, "message") if exc is not None else None)
    match = WAIT_TEXT.search(text[:2000] if isinstance(text, str) else "")
    if match is None:
        return None
    seconds = parse_retry_after(match.group(1))
    if seconds is not None and match.group(2).lower() == "ms":
        seconds /= 1000.0
    return seconds


# -- transport errors ---------------------------------------------------------------------


def _transport_kind(exc: BaseException) -> ErrorKind | None:
    names = _mro_names(exc)
    if names & _POOL_NAMES:
        return ErrorKind.POOL
    if names & _TIMEOUT_NAMES or isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT
    if names & _CONNECTION_NAMES or isinstance(exc, ConnectionError):
        return ErrorKind.CONNECTION
    return None
