"""The response headers as the httpx transport reads them, and the rate-limit parsing it feeds:
the shortcuts give what the general path gives, whatever the text."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker._core.headers import (
    RateLimitHeaders,
    _rate_limit_headers,
    parse_duration,
    parse_number,
    parse_rate_limits,
)
from llm_circuit_breaker.httpx._core import answer_headers, retry_count

# The general path alone (as it was before the shortcuts for whole numbers and one unit).
_NUMBER = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,17})?")
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|h|m|s)")


def _number(value: str) -> float | None:
    value = value.strip()
    return float(value) if _NUMBER.fullmatch(value) else None


def _duration(value: str) -> float | None:
    value = value.strip()[:64]
    number = _number(value)
    if number is not None:
        return number
    position, total = 0, 0.0
    for match in _DURATION.finditer(value):
        if match.start() != position:
            return None
        total += (
            float(match.group(1)) * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[match.group(2)]
        )
        position = match.end()
    return total if position == len(value) and position else None


_TEXT = st.text(alphabet=st.sampled_from("0123456789.mshx -+٣²\t"), max_size=20)
_DIGITS = st.integers(0, 10**16).map(str)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        _TEXT, _DIGITS, st.tuples(_DIGITS, st.sampled_from(["ms", "m", "s", "h"])).map("".join)
    )
)
def test_numbers_and_durations_parse_as_the_regular_expressions_do(text: str) -> None:
    assert parse_number(text) == _number(text)
    assert parse_duration(text) == _duration(text)


_NAMES = st.sampled_from(
    [
        "x-ratelimit-limit-requests",
        "X-RateLimit-Remaining-Tokens",
        "x-ratelimit-reset-requests",
        "anthropic-ratelimit-tokens-remaining",
        "content-type",
        "Content-Type",
        "ratelimit",
        "x-request-id",
        "x-stainless-retry-count",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(["10000", "6ms", "1m30s", "-1", "text/event-stream", "application/json"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_the_transport_picks_the_rate_limit_headers_as_the_throttle_does(
    pairs: list[tuple[str, str]],
) -> None:
    """What the transport hands the throttle is what the throttle would pick from the
    response's headers itself (then not picked again), and the buckets are the same; an SSE
    body is told as a lookup of the content type would tell it."""
    response = httpx.Response(200, headers=[(k, v.encode("latin-1")) for k, v in pairs])
    found, events = answer_headers(response)
    assert type(found) is RateLimitHeaders
    assert dict(found) == _rate_limit_headers(response.headers)
    assert _rate_limit_headers(found) is found
    now = time.time()
    assert parse_rate_limits(found, now) == parse_rate_limits(response.headers, now)
    assert events == ("text/event-stream" in response.headers.get("content-type", ""))
    request = httpx.Request("POST", "http://provider/v1", headers=response.headers.raw)
    assert retry_count(request) == request.headers.get("x-stainless-retry-count", "0")


@pytest.mark.parametrize("value", [b"2", b"\xc2\x80", b"\xff", b"\xe2\x82\xac"])
def test_the_retry_count_reads_as_httpx_reads_it(value: bytes) -> None:
    """Non-ASCII bytes decode as httpx's own lookup decodes them (UTF-8 when they are)."""
    request = httpx.Request(
        "POST", "http://provider/v1", headers=[(b"x-stainless-retry-count", value)]
    )
    assert retry_count(request) == request.headers["x-stainless-retry-count"]


def test_a_response_without_rate_limit_headers_makes_no_dict_for_them() -> None:
    """Most answers carry no rate-limit headers: the one shared empty dict stands for none,
    a new one is made only for an answer that has some."""
    none, events = answer_headers(httpx.Response(200, headers={"content-type": "text/plain"}))
    again, _ = answer_headers(httpx.Response(200))
    assert none is again and not none and type(none) is RateLimitHeaders and not events
    some, _ = answer_headers(httpx.Response(200, headers={"x-ratelimit-limit-requests": "5"}))
    assert some is not none and some == {"x-ratelimit-limit-requests": "5"} and not none


def test_only_the_names_a_bucket_is_read_from_are_picked() -> None:
    """Headers that merely hold "ratelimit" (Anthropic's input/output token limits, a gateway's
    own) tell no bucket: neither the transport nor the throttle keeps them, and an answer
    with only those makes no dict."""
    headers = {
        "anthropic-ratelimit-input-tokens-remaining": "10",
        "x-ratelimit-policy": "gateway",
        "ratelimit": "limit=10",
    }
    none, _ = answer_headers(httpx.Response(200, headers=headers))
    assert not none and none is answer_headers(httpx.Response(200))[0]
    assert _rate_limit_headers(httpx.Response(200, headers=headers).headers) == {}
    kept = headers | {"X-RateLimit-Remaining-Requests": "7"}
    some, _ = answer_headers(httpx.Response(200, headers=kept))
    assert some == {"x-ratelimit-remaining-requests": "7"}
    assert _rate_limit_headers(kept) == some
