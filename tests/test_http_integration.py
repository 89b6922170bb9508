"""The HTTP helpers against a real aiohttp fake-LLM server on 127.0.0.1 (the failure cases of a real provider, numbered as in the docs)."""

from __future__ import annotations

import logging
import time
from typing import Any

import openai
import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitState,
    LLMCircuitBreaker,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    breaker_registry,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply

FAST_RETRY = {"max_retries": 3, "initial_delay": 0.001, "max_delay": 0.01, "jitter": False}
SECRET = "sk-test-SECRETSECRET0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET}


def _facade(**breaker: Any) -> LLMCircuitBreaker:
    return LLMCircuitBreaker(
        circuit_breaker={"timeout": 0.5, **breaker}, retry=FAST_RETRY, headers=AUTH
    )


def _texts(events: list[Any]) -> list[str]:
    return [e.data["choices"][0]["delta"]["content"] for e in events]


def test_refused_connection_is_retried_and_counted(closed_port: int) -> None:
    """Connection refused -> TransportError after retries, each a breaker failure."""
    cb = _facade(failure_threshold=10)
    with pytest.raises(TransportError) as caught:
        cb.call(f"http://127.0.0.1:{closed_port}/v1/chat/completions", data={})
    assert SECRET not in str(caught.value)
    stats = cb.get_state()["stats"]
    assert (stats["failures"], stats["retries"]) == (4, 3)


def test_read_timeout_within_deadline(llm_server: FakeLLMServer) -> None:
    """No headers within the timeout -> RequestTimeoutError; the deadline bounds the wall time."""
    llm_server.default = Reply.ok(delay=2.0)
    cb = LLMCircuitBreaker(
        circuit_breaker={"timeout": 0.2},
        retry={"max_retries": 10, "initial_delay": 0.05, "deadline": 0.7},
    )
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        cb.call(llm_server.url + "/v1/chat/completions", data={})
    # Each attempt lasts at least its 0.2 s timeout, so at most 4 start within the 0.7 s
    # deadline (a slow machine only makes it fewer); without the deadline all 11 would run,
    # for at least 2.2 s.
    assert 1 <= llm_server.hits <= 4
    assert time.monotonic() - started < 2.0


def test_truncated_body_is_retried(llm_server: FakeLLMServer) -> None:
    """A body cut short is a transport error and a non-streaming call retries it."""
    llm_server.script(Reply.ok("lost", drop=True), Reply.ok("whole"))
    result = _facade().call(llm_server.url + "/v1/chat/completions", data={})
    assert result["choices"][0]["message"]["content"] == "whole"
    assert llm_server.hits == 2


def test_html_429_from_a_proxy(llm_server: FakeLLMServer) -> None:
    """An HTML 429 is retried by status and surfaces as RateLimitError, no parse crash."""
    llm_server.default = Reply(status=429, text="<html><body>Too Many Requests</body></html>")
    clock = FakeClock()  # the throttle's pauses (no hint: 1 s, 2 s, 4 s) pass on this clock
    cb = LLMCircuitBreaker(retry=FAST_RETRY, registry=BreakerRegistry(clock=clock))
    with pytest.raises(RateLimitError) as caught:
        cb.call(llm_server.url + "/v1/chat/completions", data={})
    assert "Too Many Requests" in str(caught.value)
    assert llm_server.hits == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]  # paced, not hammered: the adaptive pause doubles
    assert cb.breaker.state.value == "CLOSED"  # a rate limit is not an outage


def test_retry_after_ms_is_honoured(llm_server: FakeLLMServer) -> None:
    """The ms hint wins and is waited (not the tiny backoff)."""
    llm_server.script(
        Reply.error(429, headers={"retry-after-ms": "150", "retry-after": "2"}), Reply.ok()
    )
    cb = LLMCircuitBreaker(retry={**FAST_RETRY, "max_delay": 1.0})
    started = time.monotonic()
    cb.call(llm_server.url + "/v1/chat/completions", data={})
    assert 0.15 <= time.monotonic() - started < 1.5


def test_breaker_opens_and_fails_fast(llm_server: FakeLLMServer) -> None:
    """Consecutive 503s open the circuit; then calls fail fast without reaching the server."""
    llm_server.default = Reply.error(503)
    cb = LLMCircuitBreaker(
        circuit_breaker={"failure_threshold": 3, "reset_timeout": 60.0}, retry={"max_retries": 0}
    )
    for _ in range(3):
        with pytest.raises(ServerError):
            cb.call(llm_server.url, data={})
    hits = llm_server.hits
    for _ in range(5):
        with pytest.raises(Exception, match="is open"):
            cb.call(llm_server.url, data={})
    assert llm_server.hits == hits == 3
    assert cb.get_state()["state"] == "OPEN"


def test_openai_error_frame_first_is_retried(llm_server: FakeLLMServer) -> None:
    """An error frame before any content: transparent retry, one breaker failure."""
    llm_server.script(
        Reply.openai_stream([], error="server_error"), Reply.openai_stream(["Hel", "lo"])
    )
    cb = _facade()
    assert _texts(
        list(cb.stream(llm_server.url + "/v1/chat/completions", data={"stream": True}))
    ) == ["Hel", "lo"]
    stats = cb.get_state()["stats"]
    assert (stats["failures"], stats["successes"], llm_server.hits) == (1, 1, 2)


def test_openai_error_frame_after_content_is_raised(llm_server: FakeLLMServer) -> None:
    """Content then an error frame: the error is raised, output kept, nothing re-sent."""
    llm_server.script(Reply.openai_stream(["a", "b", "c"], error="server_error"))
    cb = _facade()
    seen: list[Any] = []
    with pytest.raises(ServerError) as caught:
        for event in cb.stream(llm_server.url + "/v1/chat/completions", data={}):
            seen.append(event)
    assert _texts(seen) == ["a", "b", "c"]
    assert caught.value.error_type == "server_error"
    assert llm_server.hits == 1
    assert cb.get_state()["stats"]["failures"] == 1


def test_anthropic_overload_first_event_is_a_529_and_retried(llm_server: FakeLLMServer) -> None:
    """HTTP 200 then event: error overloaded -> classified 529, retried."""
    llm_server.script(
        Reply.anthropic_stream([], error="overloaded_error"), Reply.anthropic_stream(["hi"])
    )
    cb = _facade()
    events = list(cb.stream(llm_server.url + "/v1/messages", data={}))
    assert [e.event for e in events] == [
        "message_start",
        "content_block_delta",
        "message_stop",
    ]  # ping skipped
    assert cb.get_state()["stats"]["failures"] == 1


def test_anthropic_overload_mid_stream_is_raised(llm_server: FakeLLMServer) -> None:
    """Deltas then an overload event: raised as a 529 ServerError, not retried."""
    llm_server.script(Reply.anthropic_stream(["a", "b"], error="overloaded_error"))
    cb = _facade()
    with pytest.raises(ServerError) as caught:
        list(cb.stream(llm_server.url + "/v1/messages", data={}))
    assert (caught.value.status_code, caught.value.error_type, llm_server.hits) == (
        529,
        "overloaded_error",
        1,
    )


def test_stream_dropped_mid_way(llm_server: FakeLLMServer) -> None:
    """Connection dropped after 2 chunks, no [DONE]: transport error, no retry, a failure."""
    llm_server.script(Reply.openai_stream(["a", "b"], done=False, drop=True))
    cb = _facade()
    seen: list[Any] = []
    with pytest.raises(TransportError):
        for event in cb.stream(llm_server.url + "/v1/chat/completions", data={}):
            seen.append(event)
    assert (_texts(seen), llm_server.hits) == (["a", "b"], 1)
    assert cb.get_state()["stats"]["failures"] == 1


def test_stream_opening_429_retried_before_streaming(llm_server: FakeLLMServer) -> None:
    """A 429 before the stream starts is retried; no chunk is duplicated."""
    llm_server.script(
        Reply.error(429, headers={"retry-after-ms": "5"}), Reply.openai_stream(["x", "y"])
    )
    assert _texts(list(_facade().stream(llm_server.url + "/v1/chat/completions", data={}))) == [
        "x",
        "y",
    ]
    assert llm_server.hits == 2


async def test_async_call_and_stream(llm_server: FakeLLMServer) -> None:
    """acall / astream go through aiohttp with the same rules."""
    llm_server.script(
        Reply.error(502),
        Reply.ok("async hi"),
        Reply.openai_stream([], error="server_error"),
        Reply.openai_stream(["p", "q"]),
    )
    async with _facade() as cb:
        result = await cb.acall(url=llm_server.url + "/v1/chat/completions", data={})
        assert result["choices"][0]["message"]["content"] == "async hi"
        assert _texts(
            [e async for e in cb.astream(llm_server.url + "/v1/chat/completions", data={})]
        ) == ["p", "q"]
    assert llm_server.hits == 4


async def test_async_stream_dropped_and_timeout(
    llm_server: FakeLLMServer, closed_port: int
) -> None:
    """astream: a dropped stream is a TransportError; acall: a slow server a RequestTimeoutError."""
    llm_server.script(Reply.anthropic_stream(["a"], finish=False, drop=True), Reply.ok(delay=2.0))
    async with LLMCircuitBreaker(circuit_breaker={"timeout": 0.2}, retry={"max_retries": 0}) as cb:
        with pytest.raises(TransportError):
            async for _ in cb.astream(llm_server.url + "/v1/messages", data={}):
                pass
        with pytest.raises(RequestTimeoutError):
            await cb.acall(llm_server.url, data={})
        with pytest.raises(TransportError):
            await cb.acall(f"http://127.0.0.1:{closed_port}/", data={})


def test_no_secret_in_errors_or_logs(
    llm_server: FakeLLMServer, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Authorization / x-api-key values appear in no message, repr or log record on any path."""
    llm_server.script(
        Reply.error(401, message=f"Incorrect API key provided: {SECRET}"),
        Reply.error(503),
        Reply.error(503),
        Reply.error(503),
        Reply.error(503),
        Reply.ok(drop=True),
        Reply.ok(drop=True),
        Reply.ok(drop=True),
        Reply.ok(drop=True),
    )
    cb = _facade(failure_threshold=100)
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        for url in (
            llm_server.url,
            llm_server.url,
            llm_server.url,
            f"http://127.0.0.1:{closed_port}/",
        ):
            try:
                cb.call(url, data={"messages": []})
            except Exception as exc:
                errors.append(exc)
    assert len(errors) == 4
    for error in errors:
        for text in (
            str(error),
            repr(error),
            str(getattr(error, "headers", "")),
            str(error.__cause__ or ""),
        ):
            assert SECRET not in text
    assert SECRET not in caplog.text
    assert SECRET not in repr(cb) + str(cb.get_state())


def test_key_in_url_is_masked_in_our_messages(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A key in a query string (Gemini's ?key=) is masked in our message, repr and retry logs.

    The HTTP client's own exception, kept as __cause__, shows the URL as the client saw it:
    keys belong in headers (docs/explanation/limits-and-secrets.md)."""
    cb = LLMCircuitBreaker(retry={**FAST_RETRY, "max_retries": 1})
    with (
        caplog.at_level(logging.INFO, logger="llm_circuit_breaker"),
        pytest.raises(TransportError) as caught,
    ):
        cb.call(f"http://127.0.0.1:{closed_port}/v1/models?key={SECRET}", data={})
    assert SECRET not in str(caught.value) + repr(caught.value)
    assert SECRET not in "".join(
        r.getMessage() for r in caplog.records if r.name == "llm_circuit_breaker"
    )


def test_sdk_retries_multiply(llm_server: FakeLLMServer) -> None:
    """The openai SDK's own 2 retries x our 3 attempts = 9 requests; max_retries=0 gives 3."""
    llm_server.default = Reply.error(
        503, headers={"retry-after-ms": "1"}
    )  # keeps the SDK's waits short

    def attempts(sdk_retries: int) -> int:
        client = openai.OpenAI(
            api_key="sk-fake", base_url=llm_server.url + "/v1", max_retries=sdk_retries
        )
        start = llm_server.hits

        @with_retry(max_retries=2, initial_delay=0.001, jitter=False)
        @circuit_breaker(f"openai-sdk-{sdk_retries}", failure_threshold=100)
        def complete() -> Any:
            return client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )

        with pytest.raises(openai.InternalServerError):
            complete()
        client.close()
        return llm_server.hits - start

    assert attempts(0) == 3
    assert breaker_registry.get("openai-sdk-0").state is CircuitState.CLOSED
    with pytest.warns(UserWarning, match="max_retries=0"):  # with_retry points it out
        assert attempts(2) == 9
