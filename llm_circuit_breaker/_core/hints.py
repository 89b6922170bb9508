"""Server retry hints: ``retry-after-ms``, ``retry-after`` and ``x-should-retry``.

Pure functions over any header mapping (a ``dict``, requests' and httpx's case-insensitive
headers, aiohttp's ``CIMultiDictProxy``). A hint that is missing, not a number, not finite,
zero, negative or absurdly far away gives ``None`` so that the caller falls back to its own
backoff; nothing here ever raises on a header value.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "header",
    "parse_number",
    "parse_retry_after",
    "retry_after_from_headers",
    "should_retry_from_headers",
]

# Longer than any real rate-limit window; a bigger value is a bug or a bogus date.
_MAX_HINT = 366 * 24 * 3600.0
# Shorter than any real wait: a smaller hint (1e-300) is noise and must not cancel the backoff.
_MIN_HINT = 1e-3
# ASCII digits only: float() also takes "١٢", "1_000", "  nan", "infinity".
_NUMBER = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,17})?")


def header(headers: Any, name: str) -> str | None:
    """Return header ``name`` (lower case) from ``headers``, matching names case-insensitively."""
    if headers is None:
        return None
    try:
        value = headers.get(name)
        if value is None and isinstance(headers, Mapping):
            # A plain dict is case-sensitive; the mapping types of HTTP clients are not.
            value = next((v for k, v in headers.items() if str(k).lower() == name), None)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return str(value)[:1000]
    except Exception:
        return None


def _positive(seconds: float) -> float | None:
    if math.isfinite(seconds) and _MIN_HINT <= seconds <= _MAX_HINT:
        return seconds
    return None


def parse_number(value: str) -> float | None:
    """A plain decimal number of ASCII digits (``"2"``, ``"1.5"``), else ``None``."""
    value = value.strip()
    return float(value) if _NUMBER.fullmatch(value) else None


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Parse a ``retry-after`` value: seconds (decimals allowed) or an HTTP-date."""
    value = value.strip()[:100]
    number = parse_number(value)
    if number is not None:
        return _positive(number)
    if not value or value[0] in "+-0123456789":
        return None  # a negative or malformed number, not a date
    import email.utils  # only an HTTP-date needs it; it costs milliseconds to import

    try:
        parsed = email.utils.parsedate_to_datetime(value)
        delta = parsed.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None
    return _positive(delta)


def retry_after_from_headers(headers: Any) -> float | None:
    """The server's wait hint in seconds: ``retry-after-ms`` first, then ``retry-after``."""
    millis = header(headers, "retry-after-ms")
    number = None if millis is None else parse_number(millis)
    if number is not None:
        hint = _positive(number / 1000.0)
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
