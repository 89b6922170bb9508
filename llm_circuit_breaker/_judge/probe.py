"""Duck-typed probes of an exception: its chain (``__cause__``, ``__context__``, exception
groups, tenacity's ``RetryError``), and the HTTP status, headers and JSON body it carries, read
by attributes only. Every probe is guarded: httpx's ``.request`` raises when unset and
``.json()`` raises on a body that was not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llm_circuit_breaker._judge.kinds import error_object_of

__all__ = [
    "attr",
    "body_of",
    "chain",
    "error_object",
    "headers_of",
    "http_status",
    "mro_names",
    "response_headers",
    "status_of",
]

# litellm gives these a made-up status (500, 408): trust the class, not the number.
_SYNTHETIC_STATUS_NAMES = frozenset({"APIConnectionError", "APITimeoutError"})
# aiohttp's HTTP parser errors carry a ``code`` (400) for the server side of aiohttp; on a
# client they mean the response was cut or malformed, a transport failure.
# A redirect loop carries the last 3xx, which says nothing about the provider's health either.
_NO_STATUS_NAMES = frozenset({"HttpProcessingError", "ClientPayloadError", "TooManyRedirects"})


# -- walking the chain --------------------------------------------------------------------


def chain(exc: BaseException) -> Iterator[BaseException]:
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
    last_attempt = attr(exc, "last_attempt")  # tenacity.RetryError
    if last_attempt is not None and type(exc).__name__ == "RetryError":
        try:
            return [last_attempt.exception()]
        except Exception:
            return []
    group = attr(exc, "exceptions")  # ExceptionGroup (3.11+), matched by shape
    if isinstance(group, tuple) and "BaseExceptionGroup" in mro_names(exc):
        return list(group[:32])
    if type(exc).__name__ == "FallbacksExhaustedError":  # ours, no ExceptionGroup on 3.10
        errors = attr(exc, "errors")
        if isinstance(errors, tuple):
            return list(errors[:32])
    return []


def attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # httpx's .request raises RuntimeError when unset
        return None


def mro_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


# -- HTTP errors --------------------------------------------------------------------------


def http_status(value: Any) -> int | None:
    """An HTTP status (100-599) from an int or a string of three ASCII digits (``"503"``,
    as some clients keep it); None for anything else."""
    if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return int(value)
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a response the exception carries; never a parser's ``code``."""
    names = mro_names(exc)
    if names & _SYNTHETIC_STATUS_NAMES or names & _NO_STATUS_NAMES:
        return None
    response = attr(exc, "response")
    # google-genai's APIError carries the status as an int ``code`` beside a str ``status``.
    genai = isinstance(attr(exc, "status"), str) and attr(exc, "details") is not None
    for value in (
        attr(exc, "status_code"),
        attr(exc, "status"),  # aiohttp ClientResponseError (0 when unknown)
        attr(exc, "code") if genai else None,
        attr(response, "status_code") if response is not None else None,
        attr(response, "status") if response is not None else None,
    ):
        status = http_status(value)
        if status is not None:
            return None if status == 200 else status  # 200: an error event inside a stream
    return None


def response_headers(exc: BaseException) -> Any:
    """The HTTP response headers an error carries (or one it was raised from); None if none."""
    for each in chain(exc):
        headers = headers_of(each)
        if headers is not None:
            return headers
    return None


def headers_of(exc: BaseException) -> Any:
    response = attr(exc, "response")
    for candidate in (
        attr(response, "headers") if response is not None else None,
        attr(exc, "headers"),
        attr(exc, "litellm_response_headers"),
    ):
        if candidate is not None and attr(candidate, "get") is not None:
            return candidate
    return None


def body_of(exc: BaseException) -> Any:
    for name in ("body", "details"):
        value = attr(exc, name)
        if isinstance(value, (dict, str)):
            return value
    response = attr(exc, "response")
    if response is not None:
        try:
            body = response.json()
        except Exception:
            return None
        close = getattr(body, "close", None) if hasattr(body, "__await__") else None
        if close is not None:  # an async client's response (aiohttp's): never awaited here
            close()
            return None
        return body
    return None


def error_object(exc: BaseException) -> dict[str, Any]:
    """The provider's error object: ``body["error"]`` when present, else the body itself."""
    return error_object_of(body_of(exc))
