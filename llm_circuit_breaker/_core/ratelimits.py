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

from llm_circuit_breaker._core.hints import parse_number

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


def _rate_limit_headers(headers: Any) -> dict[str, str]:
    """The rate-limit headers among ``headers`` as text, by lower-case name (one pass, at most
    the first 256 headers: a response with thousands is hostile, not informative)."""
    try:
        raw = getattr(headers, "raw", None)  # httpx's headers as sent: a list of byte pairs
        pairs = raw if isinstance(raw, list) else headers.items()
        found = {}
        for key, value in itertools.islice(pairs, 256):
            name = (key.decode("latin-1") if isinstance(key, bytes) else str(key)).lower()
            if "ratelimit" in name:
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
