"""The retry-hint parser never crashes, whatever the header says."""

from __future__ import annotations

import email.utils
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_circuit_breaker._core.headers import parse_retry_after, retry_after_from_headers


@given(
    st.dictionaries(
        st.sampled_from(["retry-after", "Retry-After", "retry-after-ms", "x-other"]), st.text()
    )
)
def test_arbitrary_headers_never_crash(headers: dict[str, str]) -> None:
    """Any header value gives a positive finite number of seconds or None."""
    hint = retry_after_from_headers(headers)
    assert hint is None or 0 < hint < float("inf")


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_numbers_round_trip(value: float) -> None:
    """A plain decimal value is taken as seconds between 1 ms and a year; exponents, signs,
    nan and inf fall back to the backoff."""
    text = repr(value)
    hint = parse_retry_after(text)
    plain = re.fullmatch(r"[0-9]{1,15}(\.[0-9]{1,17})?", text) is not None
    assert hint == (value if plain and 1e-3 <= value <= 366 * 86400 else None)


@pytest.mark.parametrize(
    "value", ["١٢", "1_000", "1e3", "+5", "-5", " nan", "infinity", "0", "1e-9", "0.0000001"]
)
def test_only_plain_ascii_decimals_parse(value: str) -> None:
    """Unicode digits, underscores, exponents, signs and sub-millisecond hints are ignored."""
    assert parse_retry_after(value) is None
    assert retry_after_from_headers({"retry-after-ms": value}) is None


def test_http_date() -> None:
    """An HTTP-date is seconds from now; one in the past gives None."""
    now = time.time()
    ahead = email.utils.formatdate(now + 60, usegmt=True)
    behind = email.utils.formatdate(now - 60, usegmt=True)
    assert abs(parse_retry_after(ahead, now=now) - 60) <= 1  # type: ignore[operator]
    assert parse_retry_after(behind, now=now) is None
