"""Adversarial probes of the httpx transport and the HTTP helpers: hostile headers, bodies
read partly, twice or never, probes that must always report, slots that must come back."""

from __future__ import annotations

import gc
from typing import Any

import httpx
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    Outcome,
)
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

HALF_OPEN_SOON = CircuitBreakerConfig(failure_threshold=1, reset_timeout=10.0, success_threshold=1)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.record(breaker.admit(), Outcome.FAILURE)
    clock.advance(10.0)
    assert breaker.state is CircuitState.HALF_OPEN


def _probe_breaker(name: str = "probe") -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(name, HALF_OPEN_SOON, clock=clock)
    _half_open(breaker, clock)
    return breaker, clock


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"id": "x", "choices": []})


# -- the SDK's retry-count header ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["\u00b2", "9" * 5000, "\u0661", "00", "", "-1", "1e3", " 1", "1, 1", "\uff10"]
)
def test_odd_retry_counts_are_no_crash_and_no_retry(value: str) -> None:
    """A retry-count header that is no plain ASCII number (a superscript digit, 5000 digits,
    another script's digits, several headers joined) is not the SDK's count: the request is
    sent, no retry is counted and no retry budget spent."""
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        "retries", httpx.MockTransport(_ok), registry=registry, retry_budget=0.1
    )
    with httpx.Client(transport=transport) as client:
        answer = client.get(
            "http://llm.test/", headers={"x-stainless-retry-count": value.encode("utf-8")}
        )
    assert answer.status_code == 200
    breaker = registry.get("retries")
    assert breaker.stats.retries == 0
    assert breaker.stats.calls == 1


# -- a body the inner transport read already ------------------------------------------------


def test_a_body_in_hand_reports_success_sync() -> None:
    """A transport that answers with its body read (``httpx.MockTransport``, respx, a cache):
    nothing ever reads the stream again, yet the attempt reports its success at once -- a
    HALF_OPEN probe closes the circuit while the response is still held."""
    breaker, _ = _probe_breaker()
    transport = CircuitBreakerTransport(breaker, httpx.MockTransport(_ok))
    with httpx.Client(transport=transport) as client:
        held = client.post("http://llm.test/v1/chat/completions", json=CHAT)
        assert held.json() == {"id": "x", "choices": []}
        assert breaker.state is CircuitState.CLOSED
        assert breaker.stats.successes == 1


async def test_a_body_in_hand_reports_success_async() -> None:
    breaker, _ = _probe_breaker()
    transport = AsyncCircuitBreakerTransport(breaker, httpx.MockTransport(_ok))
    async with httpx.AsyncClient(transport=transport) as client:
        held = await client.post("http://llm.test/v1/chat/completions", json=CHAT)
        assert held.status_code == 200
        assert breaker.state is CircuitState.CLOSED
        assert breaker.stats.successes == 1


def test_an_sse_body_in_hand_is_watched() -> None:
    """A stream answered with its body in hand is still read for its error frame."""
    frames = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'

    def sse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=frames)

    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("sse", httpx.MockTransport(sse), registry=registry)
    with httpx.Client(transport=transport) as client:
        held = client.post("http://llm.test/v1/chat/completions", json={**CHAT, "stream": True})
        assert held.content == frames
        assert registry.get("sse").stats.failures == 1


# -- probes through bodies read partly, never, or broken --------------------------------------


def _next_probe_admitted(breaker: CircuitBreaker) -> bool:
    """Whether the HALF_OPEN breaker admits a probe now (the slot is free); released again."""
    from llm_circuit_breaker import CircuitOpenError

    try:
        permit = breaker.admit()
    except CircuitOpenError:
        return False
    breaker.record(permit, Outcome.IGNORED)
    return True


def test_a_probe_dropped_unread_frees_its_slot(llm_server: FakeLLMServer) -> None:
    breaker, _ = _probe_breaker()
    transport = CircuitBreakerTransport(breaker)
    llm_server.script(Reply.ok())
    with httpx.Client(transport=transport) as client:
        gc.disable()
        try:
            request = client.build_request(
                "POST", llm_server.url + "/v1/chat/completions", json=CHAT
            )
            response = client.send(request, stream=True)
            assert not _next_probe_admitted(breaker)
            del response
        finally:
            gc.enable()
        gc.collect()
        assert _next_probe_admitted(breaker)
    assert breaker.state is CircuitState.HALF_OPEN


@pytest.mark.parametrize("how", ["iter_raw", "iter_bytes", "iter_lines"])
def test_a_probe_read_partly_then_closed_frees_its_slot(
    llm_server: FakeLLMServer, how: str
) -> None:
    breaker, _ = _probe_breaker()
    llm_server.script(Reply(chunks=[b"a" * 10, b"b" * 10, b"c\n" * 10]))
    with httpx.Client(transport=CircuitBreakerTransport(breaker)) as client:
        with client.stream("GET", llm_server.url + "/raw") as response:
            next(iter(getattr(response, how)()))
            assert not _next_probe_admitted(breaker)
        assert _next_probe_admitted(breaker)
        with pytest.raises(httpx.StreamError):
            next(iter(response.iter_raw()))
    assert breaker.stats.ignored >= 1


async def test_a_probe_read_partly_then_closed_frees_its_slot_async(
    llm_server: FakeLLMServer,
) -> None:
    breaker, _ = _probe_breaker()
    llm_server.script(Reply(chunks=[b"a" * 10, b"b" * 10]))
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(breaker)) as client:
        async with client.stream("GET", llm_server.url + "/raw") as response:
            async for _ in response.aiter_raw():
                break
            assert not _next_probe_admitted(breaker)
        assert _next_probe_admitted(breaker)


def test_a_probe_whose_body_breaks_reports_a_failure(llm_server: FakeLLMServer) -> None:
    """The server hangs up half-way through the body: the probe fails, the circuit reopens."""
    breaker, _ = _probe_breaker()
    llm_server.script(Reply.ok("x" * 5000, drop=True))
    with (
        httpx.Client(transport=CircuitBreakerTransport(breaker)) as client,
        pytest.raises(httpx.HTTPError),
    ):
        client.post(llm_server.url + "/v1/chat/completions", json=CHAT)
    assert breaker.state is CircuitState.OPEN


def test_a_probe_whose_stream_is_replaced_frees_its_slot(llm_server: FakeLLMServer) -> None:
    breaker, _ = _probe_breaker()
    llm_server.script(Reply.ok())
    with httpx.Client(transport=CircuitBreakerTransport(breaker)) as client:
        gc.disable()
        try:
            with client.stream("POST", llm_server.url + "/v1/chat/completions", json=CHAT) as r:
                r.stream = httpx.ByteStream(b"{}")
                assert r.read() == b"{}"
        finally:
            gc.enable()
        gc.collect()
        assert _next_probe_admitted(breaker)


def test_a_body_iterated_twice_reports_once(llm_server: FakeLLMServer) -> None:
    registry = BreakerRegistry()
    llm_server.script(Reply.ok())
    transport = CircuitBreakerTransport("twice", registry=registry)
    url = llm_server.url + "/v1/chat/completions"
    with httpx.Client(transport=transport) as client, client.stream("POST", url, json=CHAT) as r:
        body = r.read()
        assert r.read() == body
        with pytest.raises(httpx.StreamConsumed):
            list(r.iter_raw())
    stats = registry.get("twice").stats
    assert (stats.successes, stats.failures, stats.ignored) == (1, 0, 0)


# -- hostile response headers ------------------------------------------------------------------


def _answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"{}") -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    return handler


HOSTILE_HEADERS = [
    [(b"x-ratelimit-remaining-requests", b"\xff\xfe" * 600)],
    [(b"x-ratelimit-reset-requests", "\uff16s".encode())] * 3,
    [(b"x-ratelimit-limit-tokens", b"1e400"), (b"x-ratelimit-remaining-tokens", b"nan")],
    [(b"anthropic-ratelimit-tokens-reset", b"0001-01-01T00:00:00+23:59")],
    [(b"anthropic-ratelimit-tokens-reset", b"9999-12-31T23:59:59.999999-23:59")],
    [(b"x-ratelimit-reset-tokens", b"99999999999999h99999999999m")],
    [(b"retry-after", b"Wed, 21 Oct 99999 07:28:00 GMT"), (b"retry-after-ms", b"-1")],
    [(b"X-%d" % i, b"v") for i in range(10_000)] + [(b"x-ratelimit-remaining-tokens", b"1")],
    [("x-\u00e9\u00e8".encode("latin-1"), "\u00ff".encode("latin-1"))],
    [(b"content-type", b"text/event-stream"), (b"content-type", b"application/json")],
    [(b"content-encoding", b"gzip, br")],
]


@pytest.mark.parametrize("status", [200, 429, 500])
@pytest.mark.parametrize("headers", HOSTILE_HEADERS, ids=range(len(HOSTILE_HEADERS)))
def test_hostile_response_headers_never_crash(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    """Throttled by hints and limits of any shape: the answer reaches the caller, the attempt
    reports exactly once, the breaker stays usable."""
    registry = BreakerRegistry(clock=FakeClock())  # a 429's pause is not slept
    transport = CircuitBreakerTransport(
        "hostile", httpx.MockTransport(_answer(status, headers)), registry=registry,
        throttle=True, max_concurrent=1,
    )  # fmt: skip
    with httpx.Client(transport=transport) as client:
        for _ in range(2):
            try:
                answer = client.get("http://llm.test/")
            except httpx.DecodingError:  # httpx's own: "gzip, br" over a body that is neither
                assert (b"content-encoding", b"gzip, br") in headers
                continue
            assert answer.status_code in (status, 429, 503)
    stats = registry.get("hostile").stats
    assert stats.successes + stats.failures + stats.ignored + stats.throttled == 2


class _CountedHeaders(httpx.Headers):
    lookups = 0

    def __getitem__(self, key: str) -> str:
        _CountedHeaders.lookups += 1
        return super().__getitem__(key)


@pytest.mark.parametrize("status", [429, 500])
def test_an_error_answer_with_ten_thousand_headers_is_judged_in_bounded_work(status: int) -> None:
    """``dict(httpx.Headers)`` looks every name up again (quadratic: seconds of CPU for 10k
    headers); the error is judged from the first 256 headers, each read once."""
    many = [(b"x-%d" % i, b"v") for i in range(10_000)]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = httpx.Response(status, headers=many, stream=httpx.ByteStream(b"{}"))
        answer.headers = _CountedHeaders(answer.headers)
        return answer

    registry = BreakerRegistry(clock=FakeClock())
    transport = CircuitBreakerTransport("many", httpx.MockTransport(handler), registry=registry)
    _CountedHeaders.lookups = 0
    answer = transport.handle_request(httpx.Request("GET", "http://llm.test/"))
    assert answer.status_code == status
    assert _CountedHeaders.lookups < 100
    assert registry.get("many").stats.calls == 1
