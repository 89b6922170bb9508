"""ChaosTransport injects provider faults at given rates, the same ones for the same seed, and
the breakers above it see them (counted by seed, never by timing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState
from llm_circuit_breaker.httpx import (
    AsyncCircuitBreakerTransport,
    CircuitBreakerTransport,
    refusal,
)
from llm_circuit_breaker.testing import ChaosTransport, FakeLLMServer, Reply
from llm_circuit_breaker.testing.chaos import FAULTS

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
EVERY_FAULT: dict[str, Any] = dict.fromkeys(FAULTS, 0.1)
_MADE: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every SDK client a test made is closed after it: no socket is left to the collector."""
    yield
    while _MADE:
        _MADE.pop().close()


def _openai(server: FakeLLMServer, transport: Any, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(
        api_key="k", base_url=server.openai_base_url, max_retries=0,
        http_client=httpx.Client(transport=transport), **options,
    )  # fmt: skip
    _MADE.append(client)
    return client


def _anthropic(server: FakeLLMServer, transport: Any) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        api_key="k", base_url=server.anthropic_base_url, max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=transport),
    )  # fmt: skip
    _MADE.append(client)
    return client


def _provider(request: httpx.Request) -> httpx.Response:
    """An in-memory provider: an OpenAI chat stream or completion, at once."""
    if json.loads(request.content).get("stream"):
        reply = Reply.chat("Hello there!", stream=True)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content="".join(reply.events or ()).encode())  # fmt: skip
    return httpx.Response(200, json=Reply.chat("Hello there!").json)


def _outcome(client: httpx.Client, stream: bool) -> str:
    """What one request came to: its status, the error it raised, or a cut stream."""
    try:
        with client.stream(
            "POST", "http://llm.test/v1/chat/completions", json={"stream": stream}
        ) as response:
            body = response.read()
    except httpx.HTTPError as error:
        return type(error).__name__
    if stream and b"[DONE]" not in body:
        return "cut"
    return str(response.status_code)


def _outcomes(seed: int, n: int = 200, **rates: Any) -> list[str]:
    chaos = ChaosTransport(httpx.MockTransport(_provider), seed=seed, **rates)
    with httpx.Client(transport=chaos) as client:
        return [_outcome(client, stream=i % 2 == 0) for i in range(n)]


async def _async_outcomes(seed: int, n: int = 200, **rates: Any) -> list[str]:
    chaos = ChaosTransport(httpx.MockTransport(_provider), seed=seed, **rates)
    seen = []
    async with httpx.AsyncClient(transport=chaos) as client:
        for i in range(n):
            try:
                async with client.stream(
                    "POST", "http://llm.test/v1/chat/completions", json={"stream": i % 2 == 0}
                ) as response:
                    body = await response.aread()
            except httpx.HTTPError as error:
                seen.append(type(error).__name__)
                continue
            seen.append(
                "cut" if i % 2 == 0 and b"[DONE]" not in body else str(response.status_code)
            )
    return seen


# -- the faults and their rates ----------------------------------------------------------------


def test_same_seed_same_faults() -> None:
    """Two transports with the same seed inject the same faults into the same requests."""
    first, again, other = (
        _outcomes(7, **EVERY_FAULT),
        _outcomes(7, **EVERY_FAULT),
        _outcomes(8, **EVERY_FAULT),
    )
    assert first == again
    assert first != other
    assert set(first) == {"200", "500", "529", "429", "ReadTimeout", "RemoteProtocolError", "cut"}


async def test_async_requests_draw_the_same_faults() -> None:
    """The async side draws from the seed exactly as the sync side does."""
    assert await _async_outcomes(7, **EVERY_FAULT) == _outcomes(7, **EVERY_FAULT)


def test_rates_are_honoured() -> None:
    """Over many requests each fault comes at about its rate (exactly so for a given seed)."""
    chaos = ChaosTransport(httpx.MockTransport(_provider), seed=1, status_500=0.25, timeout=0.05)
    with httpx.Client(transport=chaos) as client:
        for _ in range(2000):
            try:
                client.post("http://llm.test/v1/chat/completions", json={})
            except httpx.ReadTimeout:
                pass
    injected = chaos.injected
    assert 400 <= injected["status_500"] <= 600
    assert 50 <= injected["timeout"] <= 150
    assert chaos.handled == 2000


def test_nothing_is_injected_by_default(llm_server: FakeLLMServer) -> None:
    """With no rates the transport passes every request to the provider untouched."""
    chaos = ChaosTransport(seed=1)
    client = _openai(llm_server, chaos)
    for _ in range(20):
        assert client.chat.completions.create(model="g", messages=MESSAGES).choices
    assert (llm_server.hits, chaos.injected, chaos.handled) == (20, {}, 20)


def test_unknown_rate_names_suggest_the_right_one() -> None:
    """A misspelt rate is a TypeError that names the rate it resembles."""
    with pytest.raises(TypeError, match="did you mean 'timeout'"):
        ChaosTransport(timeuot=0.1)
    with pytest.raises(TypeError, match="did you mean 'status_529'"):
        ChaosTransport(status_592=0.1)


@pytest.mark.parametrize(
    ("rates", "error"),
    [
        ({"status_500": 1.5}, ValueError),
        ({"timeout": -0.1}, ValueError),
        ({"disconnect": float("nan")}, ValueError),
        ({"truncate": "0.1"}, TypeError),
        ({"status_500": 0.6, "status_529": 0.6}, ValueError),
        ({"slow_first_token": 0.5}, TypeError),
        ({"slow_first_token": (1.5, 1.0)}, ValueError),
        ({"slow_first_token": (0.5, -1.0)}, ValueError),
    ],
)
def test_rates_are_validated(rates: dict[str, Any], error: type[Exception]) -> None:
    """Rates are numbers in [0, 1] adding up to at most 1; slow_first_token is (rate, seconds)."""
    with pytest.raises(error, match="ChaosTransport"):
        ChaosTransport(**rates)


def test_status_faults_are_provider_shaped(llm_server: FakeLLMServer) -> None:
    """Injected 429s and 529s carry each provider's own error body, and never reach it."""
    oa = _openai(llm_server, ChaosTransport(status_429=1.0))
    with pytest.raises(openai.RateLimitError) as limited:
        oa.chat.completions.create(model="g", messages=MESSAGES)
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["x-chaos"] == "status_429"
    an = _anthropic(llm_server, ChaosTransport(status_529=1.0))
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        an.messages.create(model="c", max_tokens=10, messages=MESSAGES)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert llm_server.hits == 0


def test_truncate_cuts_a_stream_silently_for_a_bare_sdk(llm_server: FakeLLMServer) -> None:
    """Without a breaker transport above it, a truncated stream reads as a shorter answer."""
    client = _openai(llm_server, ChaosTransport(truncate=1.0))
    chunks = list(client.chat.completions.create(model="g", messages=MESSAGES, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == []
    with pytest.raises(openai.APIConnectionError):  # a plain body stops half-way
        client.chat.completions.create(model="g", messages=MESSAGES)


def test_slow_first_token_holds_the_body(llm_server: FakeLLMServer) -> None:
    """A slow first token arrives late, or times out the read when slower than its timeout."""
    chaos = ChaosTransport(slow_first_token=(1.0, 0.01))
    with httpx.Client(transport=chaos) as client:
        assert (
            client.post(llm_server.openai_base_url + "/chat/completions", json={}).status_code
            == 200
        )
    assert chaos.injected == {"slow_first_token": 1}
    slow = ChaosTransport(slow_first_token=(1.0, 60.0))
    with (
        httpx.Client(transport=slow, timeout=httpx.Timeout(5.0, read=0.2)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(llm_server.openai_base_url + "/chat/completions", json={})


# -- under the breaker transport ---------------------------------------------------------------


def _breaker(threshold: int = 1000) -> CircuitBreaker:
    return CircuitBreaker("llm", CircuitBreakerConfig(failure_threshold=threshold))


def test_the_breaker_counts_every_injected_fault(llm_server: FakeLLMServer) -> None:
    """Under CircuitBreakerTransport each injected fault is one failure, each clean call one
    success, and only the clean calls reach the provider."""
    breaker = _breaker()
    chaos = ChaosTransport(
        seed=11, status_500=0.2, status_529=0.1, timeout=0.1, disconnect=0.1, truncate=0.1
    )
    client = _openai(llm_server, CircuitBreakerTransport(breaker, chaos))
    errors = 0
    for _ in range(60):
        try:
            list(client.chat.completions.create(model="g", messages=MESSAGES, stream=True))
        except (openai.APIError, httpx.HTTPError, httpx2.HTTPError):
            errors += 1
    faults = sum(chaos.injected.values())
    assert 10 <= faults <= 50
    assert (breaker.stats.failures, breaker.stats.successes) == (faults, 60 - faults)
    assert errors == faults
    assert llm_server.hits == 60 - faults + chaos.injected.get("truncate", 0)


def test_the_breaker_opens_and_spares_chaos_and_provider(llm_server: FakeLLMServer) -> None:
    """A provider that is always overloaded opens the circuit; refused calls go nowhere."""
    breaker = _breaker(threshold=3)
    chaos = ChaosTransport(seed=2, status_529=1.0)
    client = _anthropic(llm_server, CircuitBreakerTransport(breaker, chaos))
    refused = 0
    for _ in range(10):
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(model="c", max_tokens=10, messages=MESSAGES)
        refused += refusal(caught.value) is not None
    assert breaker.state is CircuitState.OPEN
    assert (chaos.handled, refused, llm_server.hits) == (3, 7, 0)


def test_an_injected_429_throttles_rather_than_trips(llm_server: FakeLLMServer) -> None:
    """An injected 429 with retry-after pauses the breaker's traffic without counting a failure."""
    breaker = _breaker()
    client = _openai(llm_server, CircuitBreakerTransport(breaker, ChaosTransport(status_429=1.0)))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="g", messages=MESSAGES)
    assert (breaker.stats.failures, breaker.stats.throttled) == (0, 1)


def test_the_breaker_sees_a_truncated_stream(llm_server: FakeLLMServer) -> None:
    """A stream cut before its final events is an error and a failure under the breaker."""
    breaker = _breaker()
    client = _openai(llm_server, CircuitBreakerTransport(breaker, ChaosTransport(truncate=1.0)))
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(client.chat.completions.create(model="g", messages=MESSAGES, stream=True))
    assert (breaker.stats.failures, breaker.stats.successes) == (1, 0)


def test_the_breaker_sees_a_slow_first_token(llm_server: FakeLLMServer) -> None:
    """A first token slower than the read timeout is a failure under the breaker."""
    breaker = _breaker()
    client = _openai(
        llm_server,
        CircuitBreakerTransport(breaker, ChaosTransport(slow_first_token=(1.0, 60.0))),
        timeout=openai.Timeout(5.0, read=0.2),
    )
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(client.chat.completions.create(model="g", messages=MESSAGES, stream=True))
    assert breaker.stats.failures == 1


async def test_async_breaker_counts_the_faults_of_its_seed(llm_server: FakeLLMServer) -> None:
    """The async transports compose the same way: the breaker counts the seed's faults."""
    breaker = _breaker()
    chaos = ChaosTransport(seed=5, status_500=0.2, disconnect=0.2, truncate=0.2)
    transport = AsyncCircuitBreakerTransport(breaker, chaos)
    errors = 0
    async with anthropic.AsyncAnthropic(
        api_key="k", base_url=llm_server.anthropic_base_url, max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(transport=transport),
    ) as client:  # fmt: skip
        for _ in range(30):
            try:
                stream = await client.messages.create(
                    model="c", max_tokens=10, messages=MESSAGES, stream=True
                )
                [event async for event in stream]
            except Exception:
                errors += 1
    faults = sum(chaos.injected.values())
    assert 5 <= faults <= 25
    assert (errors, breaker.stats.failures, breaker.stats.successes) == (
        faults,
        faults,
        30 - faults,
    )
