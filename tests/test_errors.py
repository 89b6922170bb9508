"""The error hierarchy and credential redaction."""

from __future__ import annotations

import pickle

import pytest

from llm_circuit_breaker import (
    CircuitOpenError,
    HTTPStatusError,
    LLMCircuitBreakerError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from llm_circuit_breaker.errors import http_status_error, redact_headers, redact_text

SECRET = "sk-proj-abcdefghijklmnop1234567890"


def test_hierarchy() -> None:
    """The tree drawn in errors.py."""
    assert issubclass(CircuitOpenError, LLMCircuitBreakerError)
    assert issubclass(RateLimitError, HTTPStatusError) and issubclass(ServerError, HTTPStatusError)
    assert issubclass(HTTPStatusError, LLMCircuitBreakerError)
    assert issubclass(RequestTimeoutError, TransportError) and issubclass(
        RequestTimeoutError, TimeoutError
    )
    assert issubclass(TransportError, LLMCircuitBreakerError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(429, RateLimitError), (503, ServerError), (529, ServerError), (400, HTTPStatusError)],
)
def test_http_status_error_picks_the_class(status: int, cls: type[HTTPStatusError]) -> None:
    """The factory returns the most specific class."""
    assert type(http_status_error(status)) is cls


def test_status_error_carries_context_and_hint() -> None:
    """status, headers (case-insensitive), body, url and the parsed retry hint."""
    error = http_status_error(
        429,
        {"Retry-After": "2", "x-request-id": "req_1"},
        {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
        "https://api.openai.com/v1/chat/completions",
    )
    assert error.retry_after == 2.0
    assert error.headers["RETRY-AFTER"] == "2"
    assert "Rate limit reached" in str(error) and "429" in str(error)
    assert "retry_after=2.0" in repr(error)


def test_credentials_never_shown() -> None:
    """Authorization / x-api-key values and key-looking tokens never reach str or repr."""
    error = http_status_error(
        401,
        {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "api-key": SECRET},
        {"error": {"message": f"Incorrect API key provided: {SECRET}"}},
        f"https://generativelanguage.googleapis.com/v1/models?key={SECRET}",
    )
    for text in (str(error), repr(error), str(dict(error.headers)), str(error.url)):
        assert SECRET not in text
    transport = TransportError(
        f"failed with header Authorization: Bearer {SECRET}", url=f"https://x?api_key={SECRET}"
    )
    assert SECRET not in str(transport) and SECRET not in repr(transport)


def test_redaction_helpers() -> None:
    """Header names that look like credentials are masked, others kept."""
    headers = redact_headers(
        {"X-Goog-Api-Key": "a", "Cookie": "b", "Content-Type": "json", "anthropic-version": "1"}
    )
    assert headers["x-goog-api-key"] == headers["cookie"] == "[REDACTED]"
    assert headers["content-type"] == "json" and headers["anthropic-version"] == "1"
    assert redact_text("Bearer abc.def") == "Bearer [REDACTED]"


def test_errors_pickle() -> None:
    """Errors survive pickling (multiprocessing, Celery)."""
    for error in (
        CircuitOpenError("x", 1.0),
        http_status_error(503, {"retry-after": "1"}, "down", "http://h"),
        RequestTimeoutError("slow", url="http://h"),
    ):
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error) and str(clone) == str(error)


def test_circuit_open_error_construction() -> None:
    """Positional or keyword construction; the fast path builds the same error."""
    by_keyword = CircuitOpenError(name="openai", retry_after=3.0)
    fast = CircuitOpenError.refused("openai", 3.0)
    assert (
        (by_keyword.name, by_keyword.retry_after)
        == (fast.name, fast.retry_after)
        == ("openai", 3.0)
    )
    assert str(by_keyword) == str(fast) == "circuit 'openai' is open; retry after 3.000s"
    assert CircuitOpenError("x").retry_after is None


def test_fail_fast_refusal_is_the_documented_error() -> None:
    """A call refused by an OPEN circuit (the lock-free fail-fast path) gets the same error as
    the constructor builds: its class, fields, message, repr, cause and pickle, and each
    refusal is counted once."""
    from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, circuit_breaker
    from llm_circuit_breaker.testing import FakeClock

    clock = FakeClock(start=100.0)
    breaker = CircuitBreaker("openai", CircuitBreakerConfig(failure_threshold=1), clock=clock)

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError) as opened:
        call()
    clock.advance(12.5)
    refusals = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as caught:
            call()
        refusals.append(caught.value)
    error = refusals[0]
    expected = CircuitOpenError(name="openai", retry_after=17.5, reason=error.reason)
    assert type(error) is CircuitOpenError and error.reason
    assert (error.name, error.retry_after) == ("openai", 17.5)
    assert (str(error), repr(error)) == (str(expected), repr(expected))
    assert error.__cause__ is opened.value and error.__suppress_context__
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), repr(clone)) == (CircuitOpenError, repr(error))
    assert len({id(refusal) for refusal in refusals}) == 3  # a new error per refusal
    assert breaker.stats.rejections == 3
