"""What a provider's headers say: retry hints (``retry-after-ms``, ``retry-after``,
``x-should-retry``) and rate limits (``x-ratelimit-*``, ``anthropic-ratelimit-*``).

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
    "sdk_retry_count",
    "should_retry_from_headers",
]


import dataclasses
import itertools

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
            value = next((v for k, v in headers.items() if _lowered(k) == name), None)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return str(value)[:1000]
    except Exception:
        return None


def _lowered(name: object) -> str:
    """A header name in lower case: raw ``bytes`` decoded (latin-1), as HTTP does."""
    if isinstance(name, bytes):
        return name.decode("latin-1").lower()
    return str(name).lower()


def sdk_retry_count(value: str) -> int:
    """An SDK's ``x-stainless-retry-count`` as a number, 0 (the first attempt) for anything
    but up to nine ASCII digits: ``str.isdigit()`` also takes "²" (which ``int()`` refuses),
    other scripts' digits and thousands of digits (past ``int()``'s limit), no SDK's count."""
    if value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    return 0


def _positive(seconds: float) -> float | None:
    if math.isfinite(seconds) and _MIN_HINT <= seconds <= _MAX_HINT:
        return seconds
    return None


def parse_number(value: str) -> float | None:
    """A plain decimal number of ASCII digits (``"2"``, ``"1.5"``), else ``None``."""
    value = value.strip()
    if value.isdigit() and value.isascii() and len(value) <= 15:  # the common case, sooner
        return float(value)
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


_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|h|m|s)")
_MAX_RESET = 24 * 3600.0  # a longer reset is not a rate window


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    """One limit as the provider reported it: capacity, what is left, seconds until full."""

    limit: int | None
    remaining: int | None
    reset: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimits:
    """The request and token buckets a response reported (``None``: not reported)."""

    requests: Bucket | None
    tokens: Bucket | None


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``20ms``) or a plain number of seconds."""
    value = value.strip()[:64]
    # One whole number and one unit ("6ms", "0s", "20m"): what the regular expression below
    # would find, sooner. A number followed by a unit is no plain number.
    unit = _UNITS.get(value[-2:]) if value.endswith("ms") else _UNITS.get(value[-1:])
    if unit is not None:
        whole = value[: -len(unit[0])]
        if whole.isdigit() and whole.isascii() and len(whole) <= 12:
            return float(whole) * unit[1]
    number = parse_number(value)
    if number is not None:
        return number
    position, total = 0, 0.0
    for match in _DURATION.finditer(value):
        if match.start() != position:
            return None
        amount = float(match.group(1))
        total += amount * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[match.group(2)]
        position = match.end()
    return total if position == len(value) and position else None


_UNITS = {"h": ("h", 3600.0), "m": ("m", 60.0), "s": ("s", 1.0), "ms": ("ms", 0.001)}


def _timestamp_in(value: str, now: float) -> float | None:
    """Seconds from ``now`` (a UNIX time) to an RFC 3339 time stamp."""
    from datetime import datetime

    text = value.strip()[:64]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        # What fromisoformat refuses but RFC 3339 allows: a lower-case "t" or "z", and (before
        # Python 3.11) a fraction of other than 3 or 6 digits ("59.5", nanoseconds).
        stamp = _STAMP.fullmatch(text)
        if stamp is None:
            return None
        day, clock, fraction, zone = stamp.groups()
        fraction = (fraction or "")[:6].ljust(6, "0")
        zone = "+00:00" if zone in ("Z", "z") else zone
        try:
            moment = datetime.fromisoformat(f"{day}T{clock}.{fraction}{zone}")
        except ValueError:
            return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp() - now


_STAMP = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,12}))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _count(text: str | None) -> int | None:
    number = None if text is None else parse_number(text)
    return int(number) if number is not None and number < 1e12 else None  # -1: unknown


# Each family's (limit, remaining, reset) header names, and whether its reset is a time stamp.
_FAMILIES = {
    kind: (
        (tuple(f"x-ratelimit-{part}-{kind}" for part in ("limit", "remaining", "reset")), False),
        (
            tuple(f"anthropic-ratelimit-{kind}-{part}" for part in ("limit", "remaining", "reset")),
            True,
        ),
    )
    for kind in ("requests", "tokens")
}


def _bucket(headers: dict[str, str], kind: str, wall_now: float) -> Bucket | None:
    """The ``kind`` bucket the headers report (OpenAI-style first, then Anthropic's)."""
    for (limit_name, remaining_name, reset_name), stamped in _FAMILIES[kind]:
        limit_text, remaining_text = headers.get(limit_name), headers.get(remaining_name)
        reset_text = headers.get(reset_name)
        if limit_text is None and remaining_text is None and reset_text is None:
            continue
        limit, remaining, reset = _count(limit_text), _count(remaining_text), None
        if reset_text is not None:
            reset = _timestamp_in(reset_text, wall_now) if stamped else parse_duration(reset_text)
            if reset is not None and not 0.0 <= reset <= _MAX_RESET:
                reset = None
        if limit is not None or remaining is not None or reset is not None:
            return Bucket(limit, remaining, reset)
    return None


# Every rate-limit header name a bucket is read from (lower case, as bytes and as text).
RATE_LIMIT_NAMES = frozenset(
    name for families in _FAMILIES.values() for names, _ in families for name in names
)
RATE_LIMIT_BYTES = frozenset(name.encode("ascii") for name in RATE_LIMIT_NAMES)


class RateLimitHeaders(dict[str, str]):
    """Rate-limit headers picked already (by whoever read the response: the httpx transport)
    as :func:`_rate_limit_headers` picks them: those a bucket is read from, by lower-case
    name, text values of at most 1000 characters, from the first 256 headers. Not picked
    again."""

    __slots__ = ()


def _rate_limit_headers(headers: Any) -> dict[str, str]:
    """The rate-limit headers among ``headers`` that a bucket is read from
    (``RATE_LIMIT_NAMES``) as text, by lower-case name (one pass, at most the first 256
    headers: a response with thousands is hostile, not informative)."""
    if headers.__class__ is RateLimitHeaders:
        return headers
    try:
        raw = getattr(headers, "raw", None)  # httpx's headers as sent: a list of byte pairs
        pairs = raw if isinstance(raw, list) else headers.items()
        found = {}
        for key, value in itertools.islice(pairs, 256):
            name = (key.decode("latin-1") if isinstance(key, bytes) else str(key)).lower()
            if name in RATE_LIMIT_NAMES:
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                found[name] = text[:1000]
        return found
    except Exception:
        return {}


def parse_rate_limits(headers: Any, wall_now: float) -> RateLimits | None:
    """The buckets a response's headers report, or None when it reports none."""
    headers = _rate_limit_headers(headers)
    if not headers:
        return None
    requests = _bucket(headers, "requests", wall_now)
    tokens = _bucket(headers, "tokens", wall_now)
    if requests is None and tokens is None:
        return None
    return RateLimits(requests, tokens)
