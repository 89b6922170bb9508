"""The one verdict: every row of the classification table, and hostile input never crashes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    CircuitBreakerConfig,
    CircuitOpenError,
    Outcome,
    RequestTimeoutError,
    RetryConfig,
    ThrottledError,
    TransportError,
)
from llm_circuit_breaker._judge.classify import classify
from llm_circuit_breaker._judge.verdict import judge
from llm_circuit_breaker.config import BreakerRules
from llm_circuit_breaker.errors import http_status_error

F, IG, T = Outcome.FAILURE, Outcome.IGNORED, Outcome.THROTTLED
CONFIG = CircuitBreakerConfig(reset_timeout=30.0)


def _err(status: int, body: Any = None, **headers: str) -> BaseException:
    return http_status_error(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


ROWS: list[tuple[str, BaseException, Outcome, bool, float | None]] = [
    ("connection refused", ConnectionRefusedError(), F, True, None),
    ("our transport error", TransportError("reset"), F, True, None),
    ("read timeout", RequestTimeoutError("slow"), F, True, None),
    ("builtin timeout", TimeoutError(), F, True, None),
    ("408", _err(408), F, True, None),
    ("500", _err(500), F, True, None),
    ("502", _err(502), F, True, None),
    ("503", _err(503), F, True, None),
    ("504", _err(504), F, True, None),
    ("529", _err(529, {"type": "error", "error": {"type": "overloaded_error"}}), F, True, None),
    ("501 not listed", _err(501), F, False, None),
    ("429 rate limit", _err(429, {"error": {"code": "rate_limit_exceeded"}}), T, True, None),
    ("429 hint > max_delay", _err(429, None, retry_after="60"), T, False, None),
    ("503 hint > max_delay", _err(503, None, retry_after="60"), F, False, 60.0),
    ("503 hint >= reset_timeout", _err(503, None, retry_after="30"), F, True, 30.0),
    ("quota", _err(429, {"error": {"code": "insufficient_quota"}}), F, False, 30.0),
    (
        "402 billing",
        _err(402, {"type": "error", "error": {"type": "billing_error"}}),
        F,
        False,
        30.0,
    ),
    (
        "spend limit",
        _err(429, {"error": {"details": {"error_code": "enforced_spend_limit_reached"}}}),
        F,
        False,
        30.0,
    ),
    ("409", _err(409), IG, True, None),
    ("400", _err(400), IG, False, None),
    ("401", _err(401), IG, False, None),
    ("403", _err(403), IG, False, None),
    ("404", _err(404), IG, False, None),
    ("413", _err(413), IG, False, None),
    ("422", _err(422), IG, False, None),
    ("context length", _err(400, {"error": {"code": "context_length_exceeded"}}), IG, False, None),
    ("content policy", _err(400, {"error": {"code": "content_policy_violation"}}), IG, False, None),
    ("x-should-retry: true on 400", _err(400, None, x_should_retry="true"), IG, True, None),
    ("x-should-retry: false on 503", _err(503, None, x_should_retry="false"), F, False, None),
    ("in-stream overloaded event", _err(529, {"type": "overloaded_error"}), F, True, None),
    ("caller's own bug", KeyError("x"), F, False, None),
    ("cancelled", asyncio.CancelledError(), IG, False, None),
    ("refusal", CircuitOpenError("x", 1.0), IG, False, None),
    ("throttled", ThrottledError("x", 2.0), IG, True, None),
]


@pytest.mark.parametrize(
    ("error", "outcome", "retried", "open_for"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_every_row_of_the_table(
    error: BaseException, outcome: Outcome, retried: bool, open_for: float | None
) -> None:
    """Breaker outcome, retry decision and open-now time, row by row."""
    verdict = judge(error, CONFIG, RetryConfig(max_delay=30.0))
    assert (verdict.outcome, verdict.retry, verdict.open_for) == (outcome, retried, open_for)


def test_throttle_off_makes_a_rate_limit_a_failure() -> None:
    """throttle=False restores "a 429 is a failure"."""
    verdict = judge(_err(429), CircuitBreakerConfig(throttle=False))
    assert verdict.outcome is F


def test_rules_adjust_the_breaker_column() -> None:
    """exclude ignores a type; failure_predicate overrides the table either way."""
    assert judge(KeyError("x"), rules=BreakerRules(exclude=(KeyError,))).outcome is IG
    assert judge(_err(400), rules=BreakerRules(failure_predicate=lambda e: True)).outcome is F
    assert judge(_err(503), rules=BreakerRules(failure_predicate=lambda e: False)).outcome is IG


def test_a_failed_attempt_is_classified_once() -> None:
    """Every layer asking about one exception gets the answer classified the first time."""
    error = _err(503)
    assert classify(error) is classify(error)


def test_aiohttp_parser_errors_are_transport_failures() -> None:
    """A payload cut mid-body (aiohttp code=400 inside) is a counted, retried transport failure."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp.http_exceptions import LineTooLong, TransferEncodingError

    cut = aiohttp.ClientPayloadError("Response payload is not completed")
    cut.__cause__ = TransferEncodingError("Not enough data for satisfy transfer length header.")
    for error in (cut, LineTooLong("line", "8190")):
        verdict = judge(error)
        assert (verdict.outcome, verdict.retry) == (F, True), error


class _Hostile:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("boom")

    def __bool__(self) -> bool:
        raise RuntimeError("boom")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(min_value=-5, max_value=700),
    body=json_values,
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=30), max_size=5),
)
def test_any_body_and_headers_give_a_verdict(
    status: int, body: Any, headers: dict[str, str]
) -> None:
    """Arbitrary JSON bodies and header maps never make the classifier raise."""
    for error in (_err(max(100, min(599, status)), body), _with(status, body, headers)):
        verdict = judge(error)
        assert verdict.outcome in (F, IG, T)


def _with(status: int, body: Any, headers: Any) -> BaseException:
    error = Exception("sdk error")
    error.status_code = status  # type: ignore[attr-defined]
    error.body = body  # type: ignore[attr-defined]
    error.headers = headers  # type: ignore[attr-defined]
    error.response = _Hostile()  # type: ignore[attr-defined]
    error.__cause__ = _HostileError()
    return error


class _HostileError(Exception):
    def __bool__(self) -> bool:
        raise RuntimeError("boom")

    @property
    def status_code(self) -> int:
        raise RuntimeError("boom")


@pytest.mark.parametrize("details", [1, True, 2.5, [{"violations": 3}], "x", None, {"a": 1}])
def test_odd_details_shapes_do_not_crash(details: Any) -> None:
    """A 500 body with ``details`` of any shape is still a server error."""
    verdict = judge(_err(500, {"error": {"message": "boom", "details": details}}))
    assert (verdict.outcome, verdict.retry) == (F, True)
