"""The retry-hint parser never crashes, whatever the header says."""

from __future__ import annotations

import email.utils
import time

from hypothesis import given
from hypothesis import strategies as st

from llm_circuit_breaker._hints import parse_retry_after, retry_after_from_headers


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
    """A numeric value is taken as seconds when positive and finite."""
    hint = parse_retry_after(repr(value))
    assert hint == (value if 0 < value <= 366 * 86400 else None)


def test_http_date() -> None:
    """An HTTP-date is seconds from now; one in the past gives None."""
    now = time.time()
    ahead = email.utils.formatdate(now + 60, usegmt=True)
    behind = email.utils.formatdate(now - 60, usegmt=True)
    assert abs(parse_retry_after(ahead, now=now) - 60) <= 1  # type: ignore[operator]
    assert parse_retry_after(behind, now=now) is None
