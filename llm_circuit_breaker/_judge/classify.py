"""What an exception means: one pure classification shared by the breaker and the retries.

Exceptions are probed by attributes and class names, never by importing an SDK: ours, the
openai and anthropic SDKs (1.x to 3.x), litellm, google-genai, httpx/httpx2, requests and
aiohttp all carry a status (``status_code``, ``status``, ``code`` or ``response.…``), headers
(``response.headers`` or ``headers``) and often a JSON body (``body``, ``details`` or
``response.json()``). The chain of ``__cause__`` / ``__context__`` is walked so that an SDK
error wrapping an httpx timeout is still a timeout. The probes themselves are in
:mod:`._probe`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_circuit_breaker._core.headers import (
    parse_retry_after,
    retry_after_from_headers,
    should_retry_from_headers,
)
from llm_circuit_breaker._judge.kinds import (
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
from llm_circuit_breaker._judge.local import is_local
from llm_circuit_breaker._judge.probe import (
    attr,
    chain,
    error_object,
    headers_of,
    http_status,
    mro_names,
    status_of,
)
from llm_circuit_breaker.errors import TransportError

__all__ = [
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
        if status == 200 or http_status(status) is None:
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
    links = list(chain(exc))
    for candidate in links:
        status = status_of(candidate)
        if status is not None:
            return _from_parts(status, headers_of(candidate), error_object(candidate), candidate)
    for candidate in links:
        body = error_object(candidate)
        kind = _kind_from_codes(candidate, body)
        if kind is not None:  # an error event inside a stream, reported with status 200 or none
            return Classification(
                kind,
                status=STREAM_ERROR_STATUS.get(kind, 500),
                retry_after=_body_hint(candidate, body),
                error_type=_first_code(candidate, body),
            )
    if any(is_local(candidate) for candidate in links):
        return Classification(ErrorKind.LOCAL)
    for candidate in reversed(links):  # the innermost transport error says most
        kind = _transport_kind(candidate)
        if kind is not None:
            return Classification(kind)
    return Classification(ErrorKind.OTHER)


def _codes(exc: BaseException | None, err: Mapping[str, Any]) -> list[str]:
    details = err.get("details")
    values = [err.get("type"), err.get("code"), err.get("status")]
    if isinstance(details, Mapping):
        values.append(details.get("error_code"))
    if exc is not None:
        values += [attr(exc, "type"), attr(exc, "code"), attr(exc, "error_type")]
        status = attr(exc, "status")
        if isinstance(status, str):
            values.append(status)
    return [v.lower()[:100] for v in values if isinstance(v, str) and v]


def _first_code(exc: BaseException | None, err: Mapping[str, Any]) -> str | None:
    codes = _codes(exc, err)
    for code in codes:  # a quota code says why, where the type says only "rate limit"
        if code in QUOTA_CODES:  # (Anthropic's spend limit is a rate_limit_error)
            return code
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
    text = message_of(err) or (attr(exc, "message") if exc is not None else None)
    match = WAIT_TEXT.search(text[:2000] if isinstance(text, str) else "")
    if match is None:
        return None
    seconds = parse_retry_after(match.group(1))
    if seconds is not None and match.group(2).lower() == "ms":
        seconds /= 1000.0
    return seconds


# -- transport errors ---------------------------------------------------------------------


def _transport_kind(exc: BaseException) -> ErrorKind | None:
    names = mro_names(exc)
    if names & _POOL_NAMES:
        return ErrorKind.POOL
    if names & _TIMEOUT_NAMES or isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT
    if names & _CONNECTION_NAMES or isinstance(exc, ConnectionError):
        return ErrorKind.CONNECTION
    return None
