"""The providers' rate-limit headers, read into one shape.

* OpenAI / Azure / Groq: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; the reset
  is a Go-style duration (``1s``, ``6m0s``, ``500ms``, ``2m59.56s``, ``1h2m3s``), or plain
  seconds (Azure). Azure sends ``-1`` for "unknown".
* Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}``; the reset is an RFC 3339 time stamp.

Pure functions over any header mapping; a value that does not parse is treated as absent.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

from llm_circuit_breaker._hints import header, parse_number

__all__ = ["Bucket", "RateLimits", "parse_duration", "parse_rate_limits"]

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


def _timestamp_in(value: str, now: float) -> float | None:
    """Seconds from ``now`` (a UNIX time) to an RFC 3339 time stamp."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(value.strip()[:64].replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp() - now


def _count(headers: Any, name: str) -> int | None:
    text = header(headers, name)
    number = None if text is None else parse_number(text)
    return int(number) if number is not None and number < 1e12 else None  # -1: unknown


def _bucket(headers: Any, prefix: str, kind: str, wall_now: float) -> Bucket | None:
    if prefix == "x-ratelimit":
        names = [f"x-ratelimit-{part}-{kind}" for part in ("limit", "remaining", "reset")]
    else:
        names = [f"anthropic-ratelimit-{kind}-{part}" for part in ("limit", "remaining", "reset")]
    limit, remaining = _count(headers, names[0]), _count(headers, names[1])
    reset_text = header(headers, names[2])
    reset = None
    if reset_text is not None:
        reset = (
            parse_duration(reset_text)
            if prefix == "x-ratelimit"
            else _timestamp_in(reset_text, wall_now)
        )
        if reset is not None and not 0.0 <= reset <= _MAX_RESET:
            reset = None
    if limit is None and remaining is None and reset is None:
        return None
    return Bucket(limit, remaining, reset)


def _rate_limit_headers(headers: Any) -> dict[str, Any]:
    """The rate-limit headers among ``headers``, by lower-case name (one pass, at most the
    first 256 headers: a response with thousands is hostile, not informative)."""
    try:
        found = {}
        for key, value in itertools.islice(headers.items(), 256):
            name = (key.decode("latin-1") if isinstance(key, bytes) else str(key)).lower()
            if "ratelimit" in name:
                found[name] = value
        return found
    except Exception:
        return {}


def parse_rate_limits(headers: Any, wall_now: float) -> RateLimits | None:
    """The buckets a response's headers report, or None when it reports none."""
    headers = _rate_limit_headers(headers)
    if not headers:
        return None
    requests = _bucket(headers, "x-ratelimit", "requests", wall_now) or _bucket(
        headers, "anthropic", "requests", wall_now
    )
    tokens = _bucket(headers, "x-ratelimit", "tokens", wall_now) or _bucket(
        headers, "anthropic", "tokens", wall_now
    )
    if requests is None and tokens is None:
        return None
    return RateLimits(requests, tokens)
