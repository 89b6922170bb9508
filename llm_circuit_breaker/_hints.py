"""Server retry hints: ``retry-after-ms``, ``retry-after`` and ``x-should-retry``.

Pure functions over any header mapping (a ``dict``, requests' and httpx's case-insensitive
headers, aiohttp's ``CIMultiDictProxy``). A hint that is missing, not a number, not finite,
zero, negative or absurdly far away gives ``None`` so that the caller falls back to its own
backoff; nothing here ever raises on a header value.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["header", "parse_retry_after", "retry_after_from_headers", "should_retry_from_headers"]

# Longer than any real rate-limit window; a bigger value is a bug or a bogus date.
_MAX_HINT = 366 * 24 * 3600.0


def header(headers: Any, name: str) -> str | None:
    """Return header ``name`` (lower case) from ``headers``, matching names case-insensitively."""
    if headers is None:
        return None
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, Mapping):
            # A plain dict is case-sensitive; the mapping types of HTTP clients are not.
            value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    except Exception:
        return None
    return None if value is None else str(value)


def _positive(seconds: float) -> float | None:
    if math.isfinite(seconds) and 0 < seconds <= _MAX_HINT:
        return seconds
    return None


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Parse a ``retry-after`` value: seconds (decimals allowed) or an HTTP-date."""
    value = value.strip()
    try:
        return _positive(float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        delta = parsed.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None
    return _positive(delta)


def retry_after_from_headers(headers: Any) -> float | None:
    """The server's wait hint in seconds: ``retry-after-ms`` first, then ``retry-after``."""
    millis = header(headers, "retry-after-ms")
    if millis is not None:
        try:
            hint = _positive(float(millis) / 1000.0)
        except ValueError:
            hint = None
        if hint is not None:
            return hint
    seconds = header(headers, "retry-after")
    return None if seconds is None else parse_retry_after(seconds)


def should_retry_from_headers(headers: Any) -> bool | None:
    """``x-should-retry: true|false`` as a bool; any other value (or none) gives ``None``."""
    value = header(headers, "x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None
